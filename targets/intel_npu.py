"""Target `intel-npu`: Intel's NPU (Core Ultra) through ONNX Runtime's OpenVINO execution provider, as
data only — the proof that a second NPU is a capability table, not a change to shared code.

What the table encodes (OpenVINO's documentation of its NPU device): static shapes only (the NPU
compiles a model for one input size), no heterogeneous execution inside the device, 8-bit integer
kernels (uint8/int8 activations, int8 symmetric weights per channel, int32 bias) and float16 for the
rest, so a node kept float still runs on the NPU (`float_runs`) and there is no 16-bit integer mode.

Not verified on a runtime here: the `onnxruntime-openvino` wheel ships its own `onnxruntime` package
(1.24.1 when this was written), which cannot live beside ONNX Runtime 1.32 and `onnxruntime-qnn` in one
environment, and this machine has no Intel NPU.  The compiled QDQ model is measured on ONNX Runtime's
CPU, as for `ort-cpu`; the legality check is what this target adds (tests/targets/test_intel_npu.py).
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from qcompile.targets.base import Lowered, OpRule, Target, conv_weight_axis, gemm_weight_axis, matmul_weight_axis
from qcompile.targets.npu import NpuRules, check_npu, npu_precheck

__all__ = ["make_intel_npu", "OPS", "RULES"]

_RULES = [
    OpRule("Conv", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True),
    OpRule("ConvTranspose", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True),
    OpRule("Gemm", weight=1, weight_axis=gemm_weight_axis, bias=2, fuses_activation=True),
    OpRule("MatMul", weight=1, weight_axis=matmul_weight_axis),
    *(OpRule(op, activations=(0, 1)) for op in ("Add", "Mul")),
    *(OpRule(op) for op in ("Relu", "Clip", "Sigmoid", "AveragePool", "GlobalAveragePool")),
    OpRule("Concat", activations=(), output="tied_all"),
    *(OpRule(op, output="tied") for op in ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")),
]
OPS = {r.op_type: r for r in _RULES}
RULES = NpuRules(
    activation_dtypes=("uint8", "int8"),
    weight_dtypes=("int8",),
    integer_ops=("Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Gather", "Concat", "Slice"),
    # float16 kernels: what a float node of the plan runs on, on the NPU itself
    float_ops=(
        "Softmax", "LayerNormalization", "Gelu", "HardSwish", "HardSigmoid", "Tanh", "Sub", "Div",
        "Sqrt", "Pow", "ReduceMean", "Resize", "Slice", "Split", "Pad", "Erf", "Exp",
        *OPS,
    ),
    op_checks={"Softmax": ("last-axis",)},
)  # fmt: skip


def lower_intel_npu(model: ir.Model, target: Target) -> Lowered:
    """The legality check (a `LegalityError` listing every node that would leave the NPU, unless CPU
    fallback is allowed); the QDQ ONNX model is the file, measured on ONNX Runtime's CPU."""
    summary: dict[str, Any] = {
        "format": "onnx (QDQ for the OpenVINO EP)",
        "runtime": "not run on an NPU here: the QDQ model on ONNX Runtime's CPU",
        "device": target.options["device"],
        **check_npu(model, target, RULES, bool(target.options["allow_cpu_fallback"])),
    }
    return Lowered({}, None, summary)


def _precheck(model: ir.Model, target: Target) -> dict[str, bytes]:
    npu_precheck(model, target, RULES, bool(target.options["allow_cpu_fallback"]))
    return {}


def make_intel_npu(**options: Any) -> Target:
    allow = bool(options.pop("allow_cpu_fallback", False))
    if options:
        raise ValueError(f"intel-npu takes no option(s) {sorted(options)}; known: allow_cpu_fallback")
    return Target(
        name="intel-npu",
        description="Intel NPU through ONNX Runtime's OpenVINO EP (capability table; not run here)",
        ops=OPS,
        activation_dtype="uint8",
        weight_dtype="int8",
        float_kernels=RULES.float_ops,
        notes=("uint8 activations, int8 symmetric per-channel weights; float nodes run in float16 on the NPU",),
        options={"allow_cpu_fallback": allow, "device": "NPU"},
        lower=lower_intel_npu,
        static_graph=True,
        keeps_integer_inputs=True,
        precheck=_precheck,
    )
