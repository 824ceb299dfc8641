"""Spell out ops a target has no kernel for in ops it has (the reverse of `fuse_patterns`).

    HardSigmoid(x; α, β) = clip(α·x + β, 0, 1) = α · clip(x + β/α, 0, 1/α)      (α > 0)
    HardSwish(x) = x · HardSigmoid(x; 1/6, ½)
    Pow(x, 2) = x · x
    a / b = a · (1 / b)          (a constant reciprocal, or Reciprocal(b) computed at run time)

so with α = 1/6, β = ½ (PP-LCNet's squeeze-excitation gate): Mul(Clip(Add(x, 3), 0, 6), 1/6),
two integer ops on TFLite (ADD with its RELU6 fused, MUL by a constant) where HARD_SIGMOID
does not exist.  An op is expanded only where the target's table has no kernel for it
(`Target.has_kernel`) and has every op of the expansion: data, not a target name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, replace_value

__all__ = ["Expansion", "EXPANSIONS", "ExpandOps"]

Build = Callable[[ir.Node, ir.Graph, FreshNames], list[ir.Node] | None]


@dataclass(frozen=True)
class Expansion:
    op_type: str
    uses: tuple[str, ...]  # the ops the expansion is written in
    build: Build  # new nodes whose last output replaces the node's output; None when it does not apply


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def _gate(x: ir.Value, alpha: float, beta: float, base: str, graph: ir.Graph, fresh: FreshNames) -> list[ir.Node]:
    """α · clip(x + β/α, 0, 1/α) as Add, Clip, Mul."""

    def const(suffix: str, v: float) -> ir.Value:
        return add_initializer(graph, f"{base}_{suffix}", np.asarray(v, np.float32), fresh)

    add = ir.Node("", "Add", [x, const("shift", beta / alpha)], name=fresh(f"{base}_add"))
    clip = ir.Node("", "Clip", [add.outputs[0], const("lo", 0.0), const("hi", 1.0 / alpha)], name=fresh(f"{base}_clip"))
    mul = ir.Node("", "Mul", [clip.outputs[0], const("alpha", alpha)], name=fresh(f"{base}_mul"))
    return [add, clip, mul]


def _hard_sigmoid(node: ir.Node, graph: ir.Graph, fresh: FreshNames) -> list[ir.Node] | None:
    alpha, beta = _float_attr(node, "alpha", 0.2), _float_attr(node, "beta", 0.5)
    x = node.inputs[0]
    if alpha <= 0 or x is None:
        return None
    return _gate(x, alpha, beta, node.name or "hard_sigmoid", graph, fresh)


def _hard_swish(node: ir.Node, graph: ir.Graph, fresh: FreshNames) -> list[ir.Node] | None:
    """HardSwish(x) = x · HardSigmoid(x; 1/6, ½), the HardSigmoid spelt out as above."""
    x = node.inputs[0]
    if x is None:
        return None
    base = node.name or "hard_swish"
    steps = _gate(x, 1 / 6, 0.5, f"{base}_gate", graph, fresh)
    return [*steps, ir.Node("", "Mul", [x, steps[-1].outputs[0]], name=fresh(f"{base}_mul"))]


def _square(node: ir.Node, graph: ir.Graph, fresh: FreshNames) -> list[ir.Node] | None:
    """Pow(x, 2) = x · x."""
    exponent = node.inputs[1] if len(node.inputs) > 1 else None
    value = exponent.const_value.numpy() if exponent is not None and exponent.const_value is not None else None
    x = node.inputs[0]
    if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 2.0 or x is None:
        return None
    return [ir.Node("", "Mul", [x, x], name=fresh(f"{node.name or 'pow'}_square"))]


def _divide(node: ir.Node, graph: ir.Graph, fresh: FreshNames) -> list[ir.Node] | None:
    """a / b = a · (1 / b): a Mul by the reciprocal constant, or by Reciprocal(b) computed at run time."""
    a, b = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if a is None or b is None:
        return None
    base = node.name or "div"
    if b.const_value is not None:
        divisor = b.const_value.numpy()
        if divisor.dtype.kind != "f" or not np.all(divisor != 0):
            return None
        inverse = add_initializer(graph, f"{base}_inverse", (1 / divisor).astype(divisor.dtype), fresh)
        return [ir.Node("", "Mul", [a, inverse], name=fresh(f"{base}_mul"))]
    reciprocal = ir.Node("", "Reciprocal", [b], name=fresh(f"{base}_reciprocal"))
    reciprocal.outputs[0].shape = b.shape
    return [reciprocal, ir.Node("", "Mul", [a, reciprocal.outputs[0]], name=fresh(f"{base}_mul"))]


EXPANSIONS = (
    Expansion("HardSigmoid", ("Add", "Clip", "Mul"), _hard_sigmoid),
    Expansion("Pow", ("Mul",), _square),
    Expansion("Div", ("Mul", "Reciprocal"), _divide),
    Expansion("HardSwish", ("Add", "Clip", "Mul"), _hard_swish),
)


class ExpandOps(ir.passes.InPlacePass):
    """Replace each node of an `EXPANSIONS` op in `ops` by its expansion."""

    def __init__(self, ops: Sequence[str]):
        super().__init__()
        self.ops = tuple(ops)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        table = {e.op_type: e for e in EXPANSIONS if e.op_type in self.ops}
        graph, fresh, modified = model.graph, FreshNames(model.graph), False
        for node in list(graph.all_nodes()):  # branch and loop bodies too (constants stay in the main graph)
            expansion = table.get(node.op_type)
            if expansion is None or node.domain not in ("", "ai.onnx") or node.graph is None:
                continue
            new = expansion.build(node, graph, fresh)
            if not new:
                continue
            owner = node.graph
            owner.insert_before(node, new)
            old = node.outputs[0]
            for n in new:  # elementwise: every step has the node's type (and, unless set, its shape)
                n.outputs[0].shape = n.outputs[0].shape or old.shape
                if old.dtype is not None:
                    n.outputs[0].dtype = old.dtype
            out = new[-1].outputs[0]
            replace_value(old, out)
            owner.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
