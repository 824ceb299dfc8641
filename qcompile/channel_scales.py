"""Per-channel activation scales that a target's integer convolutions absorb (ORT CPU).

ORT's QLinearConv takes one scale per activation tensor.  A tensor whose channels span very
different ranges (a MobileNetV3 or PP-LCNet stem: HardSwish outputs whose peaks differ 50×) then
spends most of its 256 levels on its widest channel and rounds its narrow ones to a few levels.
Where the tensor's integer neighbours are convolutions, which scale per output channel anyway,
a scale per channel s_c costs those kernels nothing.  With s = max_c s_c and r_c = s_c / s:

    producer Conv, output channel c:    y_c / r_c = Σ (W_c / r_c) · x + b_c / r_c,  written with scale s
    depthwise reader, channel c:        Σ W_c · (q_c − z) · s_c = Σ (W_c · r_c) · (q_c − z) · s

so the int8 tensor keeps one (scale s, zero point z) for the integer kernels and the factors r_c
move into the weights' per-channel scales (exactly: the int8 weights are unchanged).  A float
neighbour (HardSwish, which ORT runs between a DQ and a Q) reads and writes true values through a
Mul by r_c or 1 / r_c.  `passes/absorb_channel_scales` rewrites the Q/DQ so; the plan itself holds
the per-channel spec (axis 1), which is exactly what the rewritten model computes.

Candidates: 4-D float tensors of the main graph written by a Conv (its own output) or a float
kernel of the target, and read only by float kernels and depthwise Convs (group = channels, one
output channel each).  The zero point is shared by every channel (the kernels take one): z is
the one that minimises Σ_c log s_c, with each channel's [lo_c, hi_c] clipped to the tensor's
calibrated [lo, hi] (so a clipping calibrator still clips) and

    s_c = max(−lo_c / (z − qmin), hi_c / (qmax − z))

A tensor gets per-channel scales when max_c s_c / min_c s_c ≥ CHANNEL_SPREAD (over live channels).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import is_float_value, name_of
from qcompile.plan import QuantSpec
from qcompile.quant_math import IntRange
from qcompile.targets.base import Target

__all__ = ["CHANNEL_SPREAD", "CHANNEL_AXIS", "channel_candidates", "channel_spec", "is_depthwise"]

CHANNEL_SPREAD = 4.0  # two bits: below it one scale loses little
CHANNEL_AXIS = 1  # NCHW
_FLOOR = 2.0**-12  # a dead channel's scale, relative to the widest channel's


def is_depthwise(node: ir.Node) -> bool:
    """A Conv with a constant weight [C, 1, kh, kw] (or one dequantized from a constant) and group C:
    output channel c reads channel c only."""
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    weight: ir.Value | None = node.inputs[1]
    producer = node.inputs[1].producer()
    if producer is not None and producer.op_type == "DequantizeLinear":  # a quantized model's weight
        weight = producer.inputs[0]
    shape = weight.const_value.shape if weight is not None and weight.const_value is not None else None
    group = node.attributes.get_int("group", 1)
    return shape is not None and len(shape) == 4 and shape[1] == 1 and shape[0] == group


def _writes_absorbably(node: ir.Node | None, value: ir.Value, target: Target) -> bool:
    if node is None:
        return False
    if node.op_type in target.float_kernels:
        return True
    weight = node.inputs[1] if node.op_type == "Conv" and len(node.inputs) > 1 else None
    return weight is not None and weight.const_value is not None and node.outputs[0] is value


def _reads_absorbably(node: ir.Node, value: ir.Value, target: Target) -> bool:
    return node.op_type in target.float_kernels or (is_depthwise(node) and node.inputs[0] is value)


def channel_candidates(model: ir.Model, target: Target) -> dict[str, int]:
    """Tensor name → channel axis, for every tensor whose integer neighbours can absorb a scale per
    channel on `target` (none where the target cannot)."""
    if not target.absorbs_channel_scales:
        return {}
    found = {}
    for node in model.graph:
        for value in node.outputs:
            rank = len(value.shape) if value.shape is not None else 0
            uses = list(value.uses())
            if not is_float_value(value) or rank != 4 or not uses or value.is_graph_output():
                continue
            if _writes_absorbably(node, value, target) and all(
                u.node.graph is model.graph and _reads_absorbably(u.node, value, target) for u in uses
            ):
                found[name_of(value)] = CHANNEL_AXIS
    return found


def _scales(lo: np.ndarray, hi: np.ndarray, z: np.ndarray, qrange: IntRange) -> np.ndarray:
    """[len(z), C]: each channel's scale for each candidate zero point (inf where z cannot hold it)."""
    below, above = (z - qrange.qmin)[:, None].astype(np.float64), (qrange.qmax - z)[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        need_lo = np.where(lo < 0, -lo / below, 0.0)
        need_hi = np.where(hi > 0, hi / above, 0.0)
    return np.maximum(need_lo, need_hi)


def channel_spec(
    spec: QuantSpec, tensor_range: tuple[float, float], lows: np.ndarray, highs: np.ndarray, qrange: IntRange
) -> tuple[QuantSpec, float] | None:
    """The per-channel spec (axis 1, one zero point) for a tensor quantized per tensor as `spec`
    over `tensor_range`, and the spread of its channel scales; None when the spread is under
    CHANNEL_SPREAD (or the tensor has no live channel)."""
    lo = np.clip(np.asarray(lows, np.float64), min(tensor_range[0], 0.0), 0.0)
    hi = np.clip(np.asarray(highs, np.float64), 0.0, max(tensor_range[1], 0.0))
    if spec.symmetric:  # the spec's own zero point (the target's symmetric type fixes it)
        zeros = np.asarray(spec.zero_point or (0,), np.int64)[:1]
    else:
        zeros = np.arange(qrange.qmin, qrange.qmax + 1, dtype=np.int64)
    scales = _scales(lo, hi, zeros, qrange)
    with np.errstate(divide="ignore"):
        cost = np.where(np.isfinite(scales).all(axis=1), np.log(np.maximum(scales, 1e-30)).sum(axis=1), np.inf)
    best = int(np.argmin(cost))
    s, live = scales[best], scales[best] > 0
    if not np.isfinite(cost[best]) or not live.any():
        return None
    spread = float(s[live].max() / s[live].min())
    if spread < CHANNEL_SPREAD:
        return None
    s = np.maximum(s, s.max() * _FLOOR).astype(np.float32)
    z = np.full(len(s), zeros[best], np.int64)
    return QuantSpec(spec.dtype, axis=CHANNEL_AXIS, symmetric=spec.symmetric).with_params(s, z), spread
