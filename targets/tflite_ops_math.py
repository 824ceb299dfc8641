"""Lowering of elementwise arithmetic, activations, Softmax and reductions.

Elementwise ops keep their input's layout: a second operand is brought into the same
permutation (a constant is first given leading unit axes, numpy's broadcasting rule, then
transposed at compile time).  Activation functions with a fixed output range write the
quantization TFLite fixes (int8: LOGISTIC and SOFTMAX 1/256, −128, TANH 1/128, 0; int16: all
three 1/32768, 0); if the plan's Q asks for another, a QUANTIZE re-scales to it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import name_of
from qcompile.targets.tflite_fuse import activation_bounds, named_bounds, saturating_activation, saturation_clips
from qcompile.targets.tflite_graph import TflQuant
from qcompile.targets.tflite_lower import Bound, Lowering, UnsupportedOp, identity, register

__all__ = ["FIXED_OUTPUT", "reduced_perm"]

FIXED_OUTPUT = {  # (op, integer type) -> the output quantization TFLite fixes
    ("LOGISTIC", "int8"): TflQuant.of(1 / 256, -128),
    ("SOFTMAX", "int8"): TflQuant.of(1 / 256, -128),
    ("TANH", "int8"): TflQuant.of(1 / 128, 0),
    ("LOGISTIC", "int16"): TflQuant.of(1 / 32768, 0),
    ("SOFTMAX", "int16"): TflQuant.of(1 / 32768, 0),
    ("TANH", "int16"): TflQuant.of(1 / 32768, 0),
}
_BINARY = {
    "Add": ("ADD", "AddOptions"),
    "Sub": ("SUB", "SubOptions"),
    "Mul": ("MUL", "MulOptions"),
    "Max": ("MAXIMUM", None),
    "Min": ("MINIMUM", None),
    "Div": ("DIV", "DivOptions"),
}
_SELECTING = ("MAXIMUM", "MINIMUM")  # output values are input values: one quantization for all


def _operand(low: Lowering, node: ir.Node, i: int, rank: int, perm: tuple[int, ...]) -> Bound:
    """Input `i` broadcast to `rank` (leading unit axes for a constant) in layout `perm`."""
    value = node.inputs[i]
    assert value is not None
    bound = low.input(node, i)
    t = low.g.tensors[bound.index]
    if len(t.shape) < rank:
        if t.data is None:
            raise UnsupportedOp(f"{node.op_type} {node.name!r}: operands of ranks {len(t.shape)} and {rank}")
        data = t.data.reshape((1,) * (rank - len(t.shape)) + t.shape)
        bound = Bound(low.g.constant(f"{t.name}_r{rank}", data, t.dtype, t.quant), identity(rank))
    return low.permuted(bound, perm)


def _common_perm(low: Lowering, node: ir.Node, rank: int) -> tuple[int, ...]:
    """The layout of the first non-constant input of full rank (else the identity)."""
    for value in node.inputs:
        if value is None or low.constant(value) is not None or low.weight(value) is not None:
            continue
        bound = low.ints.get(value.name or "") or low.floats.get(value.name or "")
        if bound is not None and len(bound.perm) == rank:
            return bound.perm
    return identity(rank)


@register(*(op for op in _BINARY if op != "Div"))
@register("Div", integer=False)
def lower_binary(low: Lowering, node: ir.Node) -> None:
    code, options = _BINARY[node.op_type]
    if code == "DIV" and low.mode == "int":
        raise UnsupportedOp(f"Div {node.name!r}: TFLite has no int8 DIV; keep it float")
    rank = len(low.shape(node.outputs[0]))
    perm = _common_perm(low, node, rank)
    a, b = (_operand(low, node, i, rank, perm) for i in (0, 1))
    act, final = low.take_activation(node) if options is not None else ("NONE", node.outputs[0])
    if code in _SELECTING:
        quant = low.quant_of_output(final)
        a, b = (low.same_quant(x, quant, node.name or code) for x in (a, b))
    y = low.output(final, perm)
    fields: dict[str, object] = {"fusedActivationFunction": act} if options is not None else {}
    if code in ("ADD", "SUB"):
        fields["potScaleInt16"] = False  # int16: any scales, not only powers of two (ignored for int8)
    low.g.emit(code, [a.index, b.index], [y], options, **fields)


def _unary(low: Lowering, node: ir.Node, code: str, options: str | None = None, **fields) -> None:
    x = low.input(node, 0)
    fixed = FIXED_OUTPUT.get((code, low.width)) if low.mode == "int" else None
    y = low.output(node.outputs[0], x.perm, fixed=fixed)
    low.g.emit(code, [x.index], [y], options, **fields)


_UNARY = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "HardSwish": "HARD_SWISH"}


@register(*_UNARY)
def lower_activation(low: Lowering, node: ir.Node) -> None:
    _unary(low, node, _UNARY[node.op_type])


@register("LeakyRelu")
def lower_leaky_relu(low: Lowering, node: ir.Node) -> None:
    alpha = node.attributes.get("alpha")
    _unary(low, node, "LEAKY_RELU", "LeakyReluOptions", alpha=alpha.as_float() if alpha is not None else 0.01)


_CLIPS = {(0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, 1.0): "RELU_0_TO_1"}


@register("Relu", "Clip")
def lower_clip(low: Lowering, node: ir.Node) -> None:
    bounds = activation_bounds(node)
    code = named_bounds(bounds, _CLIPS)
    if code is None and low.mode == "int" and bounds is not None:
        code = {"RELU": "RELU", "NONE": None}.get(saturating_activation(low, node.outputs[0], bounds) or "")
    if code is None and low.mode == "int" and bounds is not None and saturation_clips(low, node.outputs[0], bounds):
        x = low.input(node, 0)  # the output quantization's saturation is the clip: a re-scale does it
        for use in node.outputs[0].uses():
            q = use.node
            index = low.requantize(x.index, low.quant_of_q(q), name_of(q.outputs[0]))
            low.ints[name_of(q.outputs[0])] = Bound(index, x.perm)
            low.done.add(id(q))
        return
    if code is None and low.mode == "float" and bounds is not None:
        return _float_clip(low, node, bounds)
    if code is None:
        raise UnsupportedOp(
            f"Clip {node.name!r}: bounds {bounds} are not one of TFLite's RELU ranges {list(_CLIPS)} and the "
            "output's int8 range does not clip there; keep the Clip float (a plan pin) or quantize its output "
            "to its bounds"
        )
    _unary(low, node, code)


def _float_clip(low: Lowering, node: ir.Node, bounds: tuple[float, float]) -> None:
    """clip(x, lo, hi) = MINIMUM(MAXIMUM(x, lo), hi) in float32."""
    x = low.float_input(node.inputs[0])  # type: ignore[arg-type]
    rank = len(x.perm)
    current = x.index
    for code, bound in (("MAXIMUM", bounds[0]), ("MINIMUM", bounds[1])):
        if not np.isfinite(bound):
            continue
        const = low.g.constant(f"{node.name}_{code.lower()}", np.full((1,) * rank, bound, np.float32), "float32")
        last = code == "MINIMUM" or not np.isfinite(bounds[1])
        out = (
            low.output(node.outputs[0], x.perm) if last else low.scratch(node.outputs[0], low.g.tensors[x.index].shape)
        )
        low.g.emit(code, [current, const], [out])
        current = out


@register("PRelu")
def lower_prelu(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.outputs[0]))
    perm = _common_perm(low, node, rank)
    x, slope = _operand(low, node, 0, rank, perm), _operand(low, node, 1, rank, perm)
    low.g.emit("PRELU", [x.index, slope.index], [low.output(node.outputs[0], perm)])


@register("Softmax")
def lower_softmax(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.inputs[0]))
    attr = node.attributes.get("axis")
    axis = (attr.as_int() if attr is not None else -1) % rank
    x = low.input(node, 0)
    if x.perm[-1] != axis:  # SOFTMAX runs over the last TFLite axis
        x = low.permuted(x, tuple(a for a in x.perm if a != axis) + (axis,))
    fixed = FIXED_OUTPUT[("SOFTMAX", low.width)] if low.mode == "int" else None
    y = low.output(node.outputs[0], x.perm, fixed=fixed)
    low.g.emit("SOFTMAX", [x.index], [y], "SoftmaxOptions", beta=1.0)


def reduced_perm(perm: tuple[int, ...], axes: list[int]) -> tuple[int, ...]:
    """The layout left when ONNX axes `axes` are dropped: each kept axis renumbered, order kept."""
    kept = [a for a in perm if a not in axes]
    return tuple(a - sum(1 for r in axes if r < a) for a in kept)


@register("ReduceMean", "ReduceMax")
def lower_reduce(low: Lowering, node: ir.Node) -> None:
    rank = len(low.shape(node.inputs[0]))
    attr = node.attributes.get("axes")
    if attr is not None:
        axes = list(attr.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = low.constant(node.inputs[1])
        if arr is None:
            raise UnsupportedOp(f"{node.op_type} {node.name!r}: axes are not constant")
        axes = [int(a) for a in arr.reshape(-1)]
    else:
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    keep_attr = node.attributes.get("keepdims")
    keep = bool(keep_attr.as_int()) if keep_attr is not None else True
    x = low.input(node, 0)
    tfl_axes = np.asarray([x.perm.index(a) for a in axes], np.int32)
    axes_index = low.g.constant(f"{node.name}_axes", tfl_axes, "int32")
    out_perm = x.perm if keep else reduced_perm(x.perm, axes)
    y = low.output(node.outputs[0], out_perm)
    code = "MEAN" if node.op_type == "ReduceMean" else "REDUCE_MAX"
    low.g.emit(code, [x.index, axes_index], [y], "ReducerOptions", keepDims=keep)


@register("BatchNormalization", integer=False)
def lower_batch_norm(low: Lowering, node: ir.Node) -> None:
    """A batch norm left in the graph (a QDQ file from another tool keeps it float):
    y = x · s + (β − μ · s),  s = γ / √(σ² + ε), as MUL and ADD over the channel axis."""
    params = [low.float_constant(v) for v in node.inputs[1:5]]
    if any(p is None for p in params):
        raise UnsupportedOp(f"BatchNormalization {node.name!r}: scale, bias, mean and variance must be constant")
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
    eps = node.attributes.get("epsilon")
    scale = gamma / np.sqrt(var + (eps.as_float() if eps is not None else 1e-5))
    shift = beta - mean * scale
    rank = len(low.shape(node.inputs[0]))
    x = low.float_input(node.inputs[0])  # type: ignore[arg-type]
    shape = (1, -1) + (1,) * (rank - 2)
    s, b = (
        low.permuted(
            Bound(low.g.constant(f"{node.name}_{k}", v.reshape(shape).astype(np.float32), "float32"), identity(rank)),
            x.perm,
        )
        for k, v in (("scale", scale), ("shift", shift))
    )
    scaled = low.scratch(node.outputs[0], low.g.tensors[x.index].shape)
    low.g.emit("MUL", [x.index, s.index], [scaled], "MulOptions", fusedActivationFunction="NONE")
    low.g.emit(
        "ADD", [scaled, b.index], [low.output(node.outputs[0], x.perm)], "AddOptions", fusedActivationFunction="NONE"
    )
