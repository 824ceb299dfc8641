"""Fold elementwise affine ops by constants into the Conv/ConvTranspose/Gemm/MatMul beside them.

After a producer y = W ⊛ x + b whose output feeds only the elementwise op, with a constant
k that is a scalar or one value per output channel m (size 1 on every other axis):

    y + k  → W,      b + k             y − k → W,      b − k          k − y → −W, k − b
    y · k  → W·k_m,  b·k               y / k → W/k_m,  b/k            (k ≠ 0)

MatMul has no bias, so only y·k and y/k fold into it.  Gemm folds only with beta = 1.
Behind a Transpose (Conv → Transpose_p → op(k), as NHWC exports write it), k runs along
the axis the permutation moved the channels to, p⁻¹(1); the Transpose stays.  Before a
Conv, a Mul/Div of x by a finite constant per input channel c (or a scalar) folds into the
weights, W'[m, c] = W[m, c]·k_c: exact with zero padding too, since 0·k_c = 0.  An additive
constant before a Conv is not folded: it would also shift the padded zeros.

Each fold is an onnxscript rewrite rule (pattern, check with a reason, rewrite).  A rule
does nothing unless it can prove the fold exact: weights and constants known, the producer's
output read by nothing else and not a graph output, k broadcasting along the channel axis
only.  New weights get fresh names (shared weights are never changed in place) and the
fused node keeps the producer's name.  Arithmetic is done in float64, stored in the
weights' dtype.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewritePass, RewriteRuleClassBase, RewriteRuleSet

from qcompile.ir_utils import FreshNames
from qcompile.pipeline import RemovingUnused

__all__ = ["fold_affine_pass", "FOLD_AFFINE_RULES"]

_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SCALING = ("Mul", "Div")


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
        return None
    return value.const_value.numpy().astype(np.float64)


def _fresh(graph: ir.Graph | ir.Function, base: str) -> str:
    return FreshNames(graph)(base) if isinstance(graph, ir.Graph) else base


def _folded_name(weight: ir.Value) -> str:
    name = weight.name or "weight"
    return name if name.endswith("_folded") else f"{name}_folded"


def _per_channel(k: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """k as a [channels] vector if it broadcasts against a rank-`rank` tensor along `axis` only."""
    if k.ndim > rank:
        return None
    shape = (1,) * (rank - k.ndim) + k.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(k.reshape(-1), (channels,)).copy()


class _Layout:
    """Where a producer's output channels live: in its weight and in its output."""

    def __init__(self, node: ir.Node, w: np.ndarray):
        op, attrs = node.op_type, node.attributes
        self.op, self.w_shape = op, w.shape
        self.group = attrs["group"].as_int() if "group" in attrs else 1
        trans_b = op == "Gemm" and "transB" in attrs and attrs["transB"].as_int() == 1
        self.channels = {
            "Conv": w.shape[0],
            "ConvTranspose": w.shape[1] * self.group,
            "Gemm": w.shape[0] if trans_b else w.shape[-1],
            "MatMul": w.shape[-1],
        }[op]
        self.trans_b = trans_b
        self.out_rank = w.ndim if op in ("Conv", "ConvTranspose") else 2
        self.out_axis = 1 if op in ("Conv", "ConvTranspose") else -1

    def scale_weight(self, w: np.ndarray, k: np.ndarray) -> np.ndarray:
        """W with output channel m multiplied by k[m]."""
        if self.op == "Conv":
            return w * k.reshape((-1,) + (1,) * (w.ndim - 1))
        if self.op == "ConvTranspose":  # [C, M/g, ...]: channel m = group·M/g + j
            g, per = self.group, w.shape[1]
            grouped = w.reshape((g, w.shape[0] // g, per) + w.shape[2:])
            return (grouped * k.reshape((g, 1, per) + (1,) * (w.ndim - 2))).reshape(w.shape)
        return w * (k.reshape(-1, 1) if self.trans_b else k)


def _bias(node: ir.Node) -> tuple[bool, np.ndarray | None]:
    """(has a bias input, its value); a bias that is not a constant makes the fold impossible."""
    value = node.inputs[2] if len(node.inputs) > 2 else None
    return value is not None, _const(value)


def _folded(op: str, constant_first: bool, layout: _Layout, w: np.ndarray, b: np.ndarray, k: np.ndarray):
    """(W', b') for op(W ⊛ x + b, k), or k − (W ⊛ x + b) when `constant_first` (see the module docstring)."""
    if op == "Add":
        return w, b + k
    if op == "Sub":
        return (-w, k - b) if constant_first else (w, b - k)
    factor = k if op == "Mul" else 1.0 / k
    return layout.scale_weight(w, factor), b * factor


class _AffineAfter(RewriteRuleClassBase):
    """`op(producer(x, W, b), k)` → producer(x, W', b'); also `k − producer(...)` and, with
    `transposed`, `op(Transpose(producer(...)), k)` → Transpose(producer(x, W', b'))."""

    def __init__(self, producer: str, op: str, constant_first: bool = False, transposed: bool = False):
        suffix = ("_reversed" if constant_first else "") + ("_through_transpose" if transposed else "")
        super().__init__(f"fold_{op.lower()}_into_{producer.lower()}{suffix}")
        self.producer, self.op, self.constant_first, self.transposed = producer, op, constant_first, transposed

    def pattern(self, op, x, w, k):
        y = getattr(op, self.producer)(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"])
        if self.transposed:
            y = op.Transpose(y, _allow_other_attributes=True, _outputs=["t"])
        return getattr(op, self.op)(k, y) if self.constant_first else getattr(op, self.op)(y, k)

    def check(self, context, x, w, k, y, t=None) -> MatchResult:
        result = MatchResult()
        node = y.producer()
        weight, constant = _const(w), _const(k)
        has_bias, bias = _bias(node)
        if weight is None or constant is None or (has_bias and bias is None):
            return result.fail("weight, bias or the elementwise operand is not a float constant")
        if y.is_graph_output() or (t is not None and t.is_graph_output()):
            return result.fail(f"{self.producer} output is a graph output")
        if self.producer == "MatMul" and (weight.ndim != 2 or self.op not in _SCALING):
            return result.fail("MatMul folds only a scale, and only with a 2-D weight")
        if "beta" in node.attributes and node.attributes["beta"].as_float() != 1:
            return result.fail("Gemm with beta != 1")
        layout = _Layout(node, weight)
        vec = self._channel_vector(layout, constant, y, t)
        if vec is None:
            return result.fail("the constant is not a finite scalar or one value per output channel")
        if self.op == "Div" and not np.all(vec):
            return result.fail("division by a zero constant")
        graph = context.graph_or_function
        self._fold = (
            layout,
            weight,
            bias,
            vec,
            _fresh(graph, _folded_name(w)),
            _fresh(graph, f"{node.name or self.producer}_bias"),
        )
        return result

    def _channel_vector(self, layout: _Layout, k: np.ndarray, y: ir.Value, t: ir.Value | None) -> np.ndarray | None:
        """k as one value per output channel, if it broadcasts along the channel axis only."""
        if self.producer == "MatMul":
            if y.shape is None and k.ndim > 1:
                return None
            rank = len(y.shape) if y.shape is not None else 1
        else:
            rank = layout.out_rank
        axis = rank - 1 if layout.out_axis == -1 else 1
        transpose = t.producer() if t is not None else None
        if transpose is not None:  # the channels moved: output axis i of the Transpose is its input axis perm[i]
            perm = list(transpose.attributes["perm"].as_ints())
            if len(perm) != rank:
                return None
            axis = perm.index(axis)
        vec = _per_channel(k, rank, axis, layout.channels)
        return vec if vec is not None and np.all(np.isfinite(vec)) else None

    def rewrite(self, op, x, w, k, y, t=None):
        node = y.producer()
        layout, weight, bias, vec, w_name, b_name = self._fold
        b = bias if bias is not None else np.zeros(layout.channels)
        new_w, new_b = _folded(self.op, self.constant_first, layout, weight, b, vec)
        dtype = w.const_value.numpy().dtype
        inputs = [x, op.initializer(ir.tensor(new_w.astype(dtype)), name=w_name)]
        if self.producer != "MatMul":
            inputs.append(op.initializer(ir.tensor(np.asarray(new_b, dtype)), name=b_name))
        fused = op.op(self.producer, *inputs, _name=node.name, **dict(node.attributes))
        return fused if t is None else op.Transpose(fused, **dict(t.producer().attributes))


class _ScaleBeforeConv(RewriteRuleClassBase):
    """`Conv(x · k, W, b)` → `Conv(x, W', b)` with W'[m, c] = W[m, c]·k_c (Div: 1/k_c)."""

    def __init__(self, op: str):
        super().__init__(f"fold_{op.lower()}_before_conv")
        self.op = op

    def pattern(self, op, x, k, w):
        scaled = getattr(op, self.op)(x, k, _outputs=["scaled"])
        return op.Conv(scaled, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, k, w, scaled, y) -> MatchResult:
        result = MatchResult()
        weight, constant = _const(w), _const(k)
        if weight is None or constant is None:
            return result.fail("weight or scale is not a float constant")
        if scaled.is_graph_output():
            return result.fail("the scaled input is a graph output")
        if x.shape is None or scaled.shape is None or list(x.shape) != list(scaled.shape):
            return result.fail("the scale changes the input's shape (or the shapes are unknown)")
        conv = y.producer()
        group = conv.attributes["group"].as_int() if "group" in conv.attributes else 1
        vec = _per_channel(constant, weight.ndim, 1, weight.shape[1] * group)
        if vec is None or not np.all(np.isfinite(vec)) or (self.op == "Div" and not np.all(vec)):
            return result.fail("the scale is not a finite, non-zero scalar or one value per input channel")
        self._fold = (
            weight,
            vec if self.op == "Mul" else 1.0 / vec,
            group,
            _fresh(context.graph_or_function, _folded_name(w)),
        )
        return result

    def rewrite(self, op, x, k, w, scaled, y):
        conv = y.producer()
        weight, vec, g, w_name = self._fold
        m, c = weight.shape[0] // g, weight.shape[1]
        grouped = weight.reshape((g, m, c) + weight.shape[2:])
        new_w = (grouped * vec.reshape((g, 1, c) + (1,) * (weight.ndim - 2))).reshape(weight.shape)
        w_value = op.initializer(ir.tensor(new_w.astype(w.const_value.numpy().dtype)), name=w_name)
        return op.op("Conv", x, w_value, *conv.inputs[2:], _name=conv.name, **dict(conv.attributes))


FOLD_AFFINE_RULES = RewriteRuleSet(
    [
        *(_AffineAfter.rule(p, o) for p in _PRODUCERS for o in ("Add", "Sub", "Mul", "Div")),
        *(_AffineAfter.rule(p, "Sub", constant_first=True) for p in _PRODUCERS if p != "MatMul"),
        *(
            _AffineAfter.rule(p, o, transposed=True)
            for p in ("Conv", "ConvTranspose")
            for o in ("Add", "Sub", "Mul", "Div")
        ),
        *(_ScaleBeforeConv.rule(o) for o in _SCALING),
    ],
    commute=True,
)


def fold_affine_pass(max_steps: int = 8) -> RemovingUnused:
    """The fold rules until none fires (a chain Sub→Mul→Add folds one op per step), then the
    weights they replaced are dropped."""
    return RemovingUnused(ir.passes.PassManager([RewritePass(FOLD_AFFINE_RULES)], steps=max_steps))
