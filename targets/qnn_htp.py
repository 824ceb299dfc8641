"""Target `qnn-htp`: Qualcomm's Hexagon NPU (HTP) through ONNX Runtime's QNN execution provider.

The file is a QDQ ONNX model, written as the EP fuses it into QNN ops: every node a quantized node
unit (DequantizeLinear → op → QuantizeLinear, graph outputs too), activations uint8 (`a8w8`) or
uint16 (`a16w8`) asymmetric, weights int8 symmetric per channel (zero point exactly 0), bias int32
at s_input · s_weight, LayerNorm's gamma uint8 (HTP wants it unsigned with unsigned activations),
16-bit Sigmoid output fixed at (1/65536, 0) and 16-bit Tanh at (1/32768, 32768) (the EP overrides
any other), static shapes, no control flow.  Facts from single-op probes on the HTP simulator
(onnxruntime-qnn 2.7.0, QNN 2.51): 16-bit depthwise Conv and GlobalAveragePool need uint16 (int16 is
refused); PRelu has no 16-bit kernel; two 16-bit activations into one MatMul are converted to 8 bits
by the EP (−40 dB), so a plan must not ask for it.

Verification runs the written file on the HTP backend (simulator on x86-64 Linux) with CPU fallback
disabled; the card records the provider options, the QNN graph's op counts, any float tensor inside
it (the simulator runs float ops a phone's HTP would not), the NPU's share of nodes and MACs, and the
simulator's run time (an x86 emulation: not a phone latency).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.targets.base import (
    LegalityError,
    Lowered,
    OpRule,
    Target,
    conv_weight_axis,
    gemm_weight_axis,
    matmul_weight_axis,
)
from qcompile.targets.npu import NpuRules, check_npu, npu_precheck, quantized_casts

__all__ = ["make_qnn_htp", "OPS", "RULES", "PRECISIONS", "DEFAULT_SOC"]

_RULES = [
    OpRule("Conv", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True, a16=True),
    OpRule("ConvTranspose", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True, a16=True),
    OpRule("Gemm", weight=1, weight_axis=gemm_weight_axis, bias=2, fuses_activation=True, a16=True),
    # two 16-bit activations: the EP converts one to 8 bits (−40 dB in a probe), so those stay 8-bit
    OpRule("MatMul", weight=1, weight_axis=matmul_weight_axis, a16=True, a16_needs_weight=True),
    *(OpRule(op, activations=(0, 1), a16=True) for op in ("Add", "Sub", "Mul", "Div")),
    OpRule("Relu", a16=True),
    OpRule("Clip", a16=True),
    OpRule("LeakyRelu", a16=True),
    OpRule("PRelu", weight=1),
    OpRule("Sigmoid", a16=True, fixed16=(1 / 65536, 0)),
    OpRule("Tanh", a16=True, fixed16=(1 / 32768, 32768)),
    *(OpRule(op, a16=True) for op in ("Softmax", "HardSigmoid", "HardSwish", "Gelu", "Sqrt", "Exp", "Erf")),
    OpRule("LayerNormalization", weight=1, bias=2, weight_dtype="uint8", a16=True),
    OpRule("ReduceMean", a16=True),
    OpRule("ReduceSum", a16=True),
    OpRule("Cast", activations=()),  # integer → float: its output quantized (npu.quantized_casts)
    OpRule("GlobalAveragePool", a16=True),
    OpRule("AveragePool", a16=True),
    OpRule("Concat", activations=(), output="tied_all", a16=True),
    OpRule("Split", output="tied", a16=True),
    *(
        OpRule(op, output="tied", a16=True)
        for op in (
            "MaxPool",
            "Reshape",
            "Transpose",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Slice",
            "Gather",
            "Resize",
            "Pad",
            "DepthToSpace",
            "SpaceToDepth",
            "Expand",
            "Identity",
        )
    ),
]
OPS = {r.op_type: r for r in _RULES}
RULES = NpuRules(
    activation_dtypes=("uint8", "uint16"),
    weight_dtypes=("int8", "uint8", "int4"),
    integer_ops=("Identity", "Cast", "Expand", "Unsqueeze", "Squeeze", "Reshape", "Gather", "Concat", "Slice"),
    op_checks={
        "LayerNormalization": ("last-axis", "unsigned-weight"),
        "Softmax": ("last-axis",),
        "MatMul": ("not-both-16-bit",),
    },
)
PRECISIONS = ("a8w8", "a16w8")
DEFAULT_SOC = "57"  # Snapdragon 8 Gen 3 (SM8650), HTP v75
_PROVIDER_KEYS = ("soc_model", "htp_arch", "vtcm_mb", "htp_performance_mode")


def _file_model(model: ir.Model, directory: Path) -> Path:
    from qcompile.model_io import save_model

    return save_model(model, directory / "model.onnx")


def lower_qnn(model: ir.Model, target: Target) -> Lowered:
    """Check that every node runs on the HTP (else a `LegalityError` listing each node and rule, unless
    CPU fallback is allowed), then hand over a runner on the HTP backend and, if asked, the context binary."""
    from qcompile.targets.qnn_run import QnnRunner, qnn_available, qnn_version

    allow = bool(target.options["allow_cpu_fallback"])
    casts = quantized_casts(model)
    checked = check_npu(model, target, RULES, allow)
    if (why := qnn_available()) is not None:
        raise LegalityError(f"{target.name}: cannot verify on the QNN HTP backend: {why}")
    provider = dict(target.options["provider_options"])
    summary: dict[str, Any] = {
        "format": "onnx (QDQ for the QNN EP)",
        "runtime": f"QNN HTP backend, x86-64 simulator ({qnn_version()}), CPU fallback "
        + ("allowed" if allow else "disabled"),
        "provider_options": provider,
        **checked,
        "casts_to_uint8": casts,
        "timing_note": "simulator_ms_per_inference is an x86 emulation of the HTP, not a phone latency",
    }
    workdir = tempfile.TemporaryDirectory(prefix="qcompile-qnn-model-")
    path = _file_model(model, Path(workdir.name))
    runner = QnnRunner(path, provider, allow, summary)
    runner.workdir = workdir  # type: ignore[attr-defined]  # the file lives as long as the runner
    files: dict[str, bytes] = {}
    if target.options["context"]:
        from qcompile.targets.qnn_context import write_context

        files["{stem}.qnn_ctx.onnx"] = write_context(path, provider, allow, summary)
    return Lowered(files, runner, summary, _check(files, provider, allow, _output_steps(model)))


def _output_steps(model: ir.Model) -> dict[str, float]:
    """Each graph output's quantization step (the scale of the DequantizeLinear that writes it)."""
    steps = {}
    for value in model.graph.outputs:
        node = value.producer()
        scale = node.inputs[1] if node is not None and node.op_type == "DequantizeLinear" else None
        if scale is not None and scale.const_value is not None:
            steps[value.name or ""] = float(np.ravel(scale.const_value.numpy())[0])
    return steps


def _check(files: dict[str, bytes], provider: dict[str, str], allow: bool, steps: dict[str, float]):
    """The HTP's outputs and the context binary's against the QDQ model on ORT CPU, and the context
    binary's against the HTP's (they must be equal: it is the same compiled graph)."""

    def check(samples: list, qdq: dict[str, list], deployed: dict[str, list], streams: Any = None) -> dict[str, Any]:
        result = {"qnn_htp": _agreement(deployed, qdq, steps)}
        if "{stem}.qnn_ctx.onnx" in files:
            from qcompile.targets.qnn_context import context_outputs
            from qcompile.verify import run_outputs

            class Context:  # the context binary as a runner (a recurrent model's streams: a step at a time)
                @staticmethod
                def outputs(batch: list, progress: Any = None) -> dict[str, list]:
                    return context_outputs(files["{stem}.qnn_ctx.onnx"], provider, allow, batch)

            got = run_outputs(Context(), samples, streams=streams)
            result["qnn_context"] = _agreement(got, qdq, steps)
            result["qnn_context_vs_htp"] = _agreement(got, deployed, steps)
        return result

    return check


def _agreement(got: dict[str, list], want: dict[str, list], steps: dict[str, float]) -> dict[str, Any]:
    """Per output: the largest |difference| over all samples, and in steps of the output's scale (LSB)."""
    out = {}
    for name, wanted in want.items():
        diff = max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(got[name], wanted, strict=True)
        )
        step = steps.get(name)
        out[name] = {"max_abs_diff": diff, "max_lsb": None if not step else round(diff / step, 3)}
    return out


def _precheck(model: ir.Model, target: Target) -> dict[str, bytes]:
    npu_precheck(model, target, RULES, bool(target.options["allow_cpu_fallback"]))
    return {}


def make_qnn_htp(**options: Any) -> Target:
    precision = options.pop("precision", "a8w8")
    if precision not in PRECISIONS:
        raise ValueError(f"qnn-htp: precision {precision!r} not in {', '.join(PRECISIONS)}")
    allow = bool(options.pop("allow_cpu_fallback", False))
    context = bool(options.pop("context", False))
    provider = {"soc_model": str(options.pop("soc_model", DEFAULT_SOC))}
    for key in _PROVIDER_KEYS:
        if key in options:
            provider[key] = str(options.pop(key))
    if options:
        known = ", ".join(("precision", "allow_cpu_fallback", "context", *_PROVIDER_KEYS))
        raise ValueError(f"qnn-htp takes no option(s) {sorted(options)}; known: {known}")
    return Target(
        name="qnn-htp",
        description="Qualcomm QNN HTP (Hexagon NPU) through ONNX Runtime's QNN EP; QDQ ONNX",
        ops=OPS,
        activation_dtype="uint8",
        weight_dtype="int8",
        min_opset=13,
        max_opset=21,
        allowed_qdq_dtypes=("uint8", "uint16", "int8", "int4", "int32"),
        a16_dtype="uint16",
        a16_symmetric=False,
        notes=(
            "uint8/uint16 activations, int8 symmetric per-channel weights, int32 bias; every node a QDQ node unit",
            "verified on the HTP simulator with CPU fallback disabled; its run time is not a phone latency",
        ),
        options={
            "precision": precision,
            "allow_cpu_fallback": allow,
            "context": context,
            "provider_options": provider,
        },
        lower=lower_qnn,
        static_graph=True,
        uniform_widths=True,
        float_runs=False,
        keeps_integer_inputs=True,
        precheck=_precheck,
    )
