"""Target `ort-cpu`: QDQ ONNX that ONNX Runtime's CPU EP fuses into integer kernels.

ORT's QDQ transformer turns DQ→Conv→Q into QLinearConv, DQ→MatMul→Q into
QLinearMatMul, DQ→Gemm→Q into QGemm, DQ→Add→Q into QLinearAdd, and drops the
Q/DQ pair around data-movement ops whose input and output share a scale.  The
table below lists those ops; everything else stays float between a DQ and a Q.

Activations are uint8 (asymmetric), weights int8 symmetric per channel, bias
int32 with scale = input scale × weight scale.  On x86 without VNNI the weights
use 7 bits (see `qcompile.cpu`).
"""

from __future__ import annotations

from qcompile.cpu import CpuInfo, cpu_info
from qcompile.targets.base import OpRule, Target, conv_weight_axis, gemm_weight_axis, matmul_weight_axis

__all__ = ["make_target", "OPS"]

_RULES = [
    OpRule("Conv", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True),
    OpRule("ConvTranspose", weight=1, weight_axis=conv_weight_axis, bias=2, fuses_activation=True),
    OpRule("Gemm", weight=1, weight_axis=gemm_weight_axis, bias=2, fuses_activation=True, float_output_ok=True),
    OpRule(
        "MatMul", weight=1, weight_axis=matmul_weight_axis, fuses_activation=True, float_output_ok=True, bias_add=True
    ),
    OpRule("Add", activations=(0, 1), fuses_activation=True),
    OpRule("Mul", activations=(0, 1)),
    OpRule("Relu"),
    OpRule("Clip"),
    OpRule("LeakyRelu"),
    OpRule("Sigmoid"),
    OpRule("Softmax"),
    OpRule("AveragePool"),
    OpRule("GlobalAveragePool"),
    OpRule("Concat", activations=(), output="tied_all"),
    OpRule("Split", output="tied"),
    *(
        OpRule(op, output="tied")
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
            "Expand",
            "Tile",
            "DepthToSpace",
            "SpaceToDepth",
        )
    ),
]
OPS = {r.op_type: r for r in _RULES}


def make_target(cpu: CpuInfo | None = None, **options) -> Target:
    cpu = cpu or cpu_info()
    reduce = bool(options.pop("reduce_range", cpu.u8s8_saturates))
    if options:
        raise ValueError(f"ort-cpu takes no option(s) {sorted(options)}; known: reduce_range")
    note = (
        "x86 without VNNI: weights use 7 bits so ORT's u8s8 kernels cannot saturate"
        if reduce
        else "weights use the full int8 range"
    )
    return Target(
        name="ort-cpu",
        description="ONNX Runtime CPU EP, QDQ fused into integer kernels",
        ops=OPS,
        # decomposed forms rewritten into these single ops: one DQ→op→Q float island instead of a
        # requantizing kernel per decomposed op (ORT runs HardSwish, an ONNX function, as HardSigmoid·x)
        float_kernels=("HardSigmoid", "HardSwish", "Gelu", "LayerNormalization", "Pow", "Div"),
        activation_dtype="uint8",
        weight_dtype="int8",
        weight_reduce_range=reduce,
        absorbs_channel_scales=True,
        ort_is_runtime=True,
        notes=(note,),
        options={"reduce_range": reduce, "cpu": cpu.summary()},
    )
