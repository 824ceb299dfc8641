"""Which Relu or Clip a TFLite op can absorb: a fused activation, or its output quantization's saturation.

A fused activation clamps the op's integer output to the quantized bounds of its range (RELU
[0, ∞), RELU6 [0, 6], RELU_N1_TO_1 [−1, 1]): exact, since quantizing is monotone, Q(clip(x)) =
clamp(Q(x), Q(lo), Q(hi)).  A Clip whose bounds contain every real the output's integer range
represents (to half a step) is the saturation itself and needs no op at all; with a symmetric
int16 range, the lower side of a Clip(0, hi) is a RELU and the upper one the saturation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import const_array
from qcompile.targets.tflite_graph import INT_BOUNDS

if TYPE_CHECKING:
    from qcompile.targets.tflite_lower import Lowering

__all__ = [
    "FUSES_ACTIVATION",
    "activation_bounds",
    "named_bounds",
    "fusable_activation",
    "saturating_activation",
    "saturation_clips",
]

_FUSED_BOUNDS = {(0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}
FUSES_ACTIVATION = ("Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "MaxPool", "AveragePool")


def activation_bounds(node: ir.Node) -> tuple[float, float] | None:
    """[lo, hi] of a Relu or of a Clip with constant bounds."""
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    lo = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if (len(node.inputs) > 1 and node.inputs[1] is not None and lo is None) or (
        len(node.inputs) > 2 and node.inputs[2] is not None and hi is None
    ):
        return None
    return float(lo) if lo is not None else -np.inf, float(hi) if hi is not None else np.inf


def named_bounds(bounds: tuple[float, float] | None, table: dict[tuple[float, float], str]) -> str | None:
    """The name of `bounds` in `table`, to float32 precision (1/α of a float32 α is 5.9999986, not 6)."""
    if bounds is None:
        return None
    for (lo, hi), name in table.items():
        if all(a == b or np.isclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(bounds, (lo, hi), strict=True)):
            return name
    return None


def fusable_activation(node: ir.Node, low: Lowering | None = None) -> tuple[ir.Node, str] | None:
    """The single Relu/Clip reading `node`'s output with no quantization between, if TFLite can fuse it:
    a named range (RELU, RELU6, RELU_N1_TO_1), or, in int mode, any Clip that the output quantization's
    saturation already performs ("NONE")."""
    if node.op_type not in FUSES_ACTIVATION or node.outputs[0].is_graph_output():
        return None
    uses = list(node.outputs[0].uses())
    if len(uses) != 1:
        return None
    reader = uses[0].node
    bounds = activation_bounds(reader)
    name = named_bounds(bounds, _FUSED_BOUNDS)
    if name is None and bounds is not None and low is not None:
        name = saturating_activation(low, reader.outputs[0], bounds)
    return (reader, name) if name is not None else None


def saturating_activation(low: Lowering, value: ir.Value, bounds: tuple[float, float]) -> str | None:
    """A Clip the output's integer range performs: whole ("NONE"), or above while RELU does 0 (a
    symmetric int16 range holds negatives, so its lower side is a RELU)."""
    if saturation_clips(low, value, bounds):
        return "NONE"
    if bounds[0] == 0.0 and saturation_clips(low, value, (-np.inf, bounds[1])):
        return "RELU"
    return None


def saturation_clips(low: Lowering, value: ir.Value, bounds: tuple[float, float]) -> bool:
    """Every Q reading `value` represents only reals within `bounds` (to half a step), so that
    Q(clip(x)) = Q(x): the clip is the integer saturation itself."""
    qs = [u.node for u in value.uses() if u.node.op_type == "QuantizeLinear"]
    if not qs or len(qs) != len(list(value.uses())):
        return False
    for q in qs:
        quant = low.quant_of_q(q)
        s, z = quant.scale[0], quant.zero_point[0]
        qmin, qmax = INT_BOUNDS[low.dtype_of_q(q)]
        if quant.per_channel or s * (qmin - z) < bounds[0] - s / 2 or s * (qmax - z) > bounds[1] + s / 2:
            return False
    return True
