"""Push layout Transposes down through ops that commute with them, and cancel inverse pairs.

Converters from NHWC frameworks wrap every Conv in Transposes T_p(x) = transpose(x, p).
A Transpose moves below any op that commutes with it (the identities are in
`transpose_algebra`), and T_q(T_p(x)) composes into one Transpose, or none.  A move is
made only when it does not add Transposes along the way to a cancellation: its cost
(Transposes added − removed) is negative, where the Transpose that a move leaves on f's
output is free when that output flows, through movable ops, into another Transpose or
into a binary op whose other operand is T_p-produced (ORT's transpose optimizer lacks the
second case and the reuse of an existing Transpose, so it keeps every Transpose of a
residual NHWC block).

Values are only ever replaced by equal ones.  A Transpose read by two ops moves below one
of them only when that pays on its own (its other reader keeps it), so x − mean(x) in NHWC
may keep a Transpose that a joint move would remove.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass, RemoveUnusedNodesPass, TopologicalSortPass

from qcompile.ir_utils import FreshNames, onnx_opset
from qcompile.passes.transpose_algebra import (
    compose_pairs,
    existing_transpose,
    inverse,
    layout_inputs,
    movable,
    move_below,
    only_reader,
    perm_of,
    transpose_of,
)

__all__ = ["PushTransposes"]

_LOOKAHEAD = 64


class PushTransposes(ir.passes.InPlacePass):
    """Move Transposes towards the graph's outputs while that removes Transposes; cancel inverse pairs.

    One sweep in topological order, as ONNX Runtime's transpose optimizer does: each node, once,
    takes the Transposes of one permutation on its inputs below it if the cost is negative.
    Transposes the move adds on other operands sit upstream of the node and are never moved
    again, so nothing goes back and forth.
    """

    def requires(self, model: ir.Model) -> None:
        if onnx_opset(model) < 13:
            raise ir.passes.PreconditionError("PushTransposes needs opset 13 or later (Softmax's one-axis meaning)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        fresh = FreshNames(graph)
        modified = compose_pairs(graph)
        for node in list(graph):
            if node.graph is not None and (p := _cheapest_move(node)) is not None:
                moved = move_below(graph, node, p, fresh)
                compose_pairs(graph, [use.node for use in moved.outputs[0].uses()])
                modified = True
        if modified:
            compose_pairs(graph)
            ir.passes.Sequential(CommonSubexpressionEliminationPass(), RemoveUnusedNodesPass(), TopologicalSortPass())(
                model
            )
        return ir.passes.PassResult(model, modified)


def _cheapest_move(node: ir.Node) -> list[int] | None:
    """A permutation p whose Transposes on `node`'s inputs move below it at a negative cost."""
    if node.op_type == "Transpose" or (indices := layout_inputs(node)) is None:
        return None
    seen: dict[tuple[int, tuple[int, ...]], bool] = {}
    for i in indices:
        t = transpose_of(node.inputs[i])
        if t is not None and movable(node, perm_of(t)) and _cost(node, perm_of(t), seen) < 0:
            return perm_of(t)
    return None


def _cost(node: ir.Node, p: list[int], seen: dict) -> int:
    """Transposes added minus Transposes removed if every T_p operand of `node` moves below it."""
    inv = inverse(p)
    cost = 0
    for i in layout_inputs(node) or ():
        v = node.inputs[i]
        assert v is not None  # _movable checked it
        t = transpose_of(v)
        if t is not None and perm_of(t) == p:
            cost -= 1 if only_reader(t) else 0
        elif v.const_value is None and existing_transpose(v, inv) is None:
            cost += 1
    out = node.outputs[0]
    readers = [u.node for u in out.uses()]
    cancelled = [r for r in readers if r.op_type == "Transpose" and perm_of(r) == inv]
    cost -= len(cancelled)
    if out.is_graph_output() or len(cancelled) < len(readers):
        cost += 0 if _leads_to_transpose(out, p, _LOOKAHEAD, seen) else 1
    return cost


def _leads_to_transpose(value: ir.Value, p: list[int], depth: int, seen: dict) -> bool:
    """`value` flows, through ops a Transpose can move below, into a Transpose or into an op
    whose other operand is already T_p-produced (where moving removes that Transpose too)."""
    key = (id(value), tuple(p))
    if key not in seen:
        seen[key] = False  # a cycle cannot occur in a DAG, but a revisit must not recurse
        seen[key] = depth > 0 and _flows_into_transpose(value, p, depth, seen)
    return seen[key]


def _flows_into_transpose(value: ir.Value, p: list[int], depth: int, seen: dict) -> bool:
    for use in value.uses():
        reader = use.node
        if reader.graph is not value.graph:  # a branch reading the value: nothing there cancels
            continue
        if reader.op_type == "Transpose":
            return True
        indices = layout_inputs(reader)
        if indices is None or not movable(reader, p):
            continue
        for i in indices:
            t = transpose_of(reader.inputs[i])
            if i != use.idx and t is not None and perm_of(t) == p:
                return True
        if _leads_to_transpose(reader.outputs[0], p, depth - 1, seen):
            return True
    return False
