"""Choose each node's precision: an analysis that returns the decisions.

Policy `naive`: every node whose op the target can run in int8 gets int8; the
rest stay float.  A decision pinned in a user plan (`--plan`) wins over the
policy.  The `hybrid` policy starts from these decisions and keeps the groups its
search finds most sensitive in float (`qcompile.search`); `selective` also chooses each
tensor's calibrator (`qcompile.selective`).
"""

from __future__ import annotations

from collections.abc import Container

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.expose import body_kinds
from qcompile.ir_utils import in_subgraph, is_float_value, name_of
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets.base import Target

__all__ = ["select_precision", "check_policy", "POLICIES"]

POLICIES = ("naive", "hybrid", "selective")


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise QCompileError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def select_precision(
    model: ir.Model,
    target: Target,
    policy: str = "naive",
    pinned: QuantPlan | None = None,
    observed: Container[str] | None = None,
) -> dict[str, NodeDecision]:
    """Node name → precision decision with its reason, for every node of `model` and of its
    subgraphs (the model is only read).  With `observed` (the tensors calibration saw), a node
    inside an If branch or Loop/Scan body whose float outputs calibration never saw stays float."""
    check_policy(policy)
    pins = pinned.nodes if pinned else {}
    unknown = sorted(set(pins) - {n.name for n in model.graph.all_nodes()})
    if unknown:
        raise QCompileError(f"plan pins node(s) {unknown[:5]} that the model does not have")
    decisions: dict[str, NodeDecision] = {}
    bodies = body_kinds(model)
    wide = target.options.get("precision") == "a16w8" and target.a16_dtype is not None
    for node in model.graph.all_nodes():
        name = name_of(node)
        if name in pins:
            decisions[name] = NodeDecision(pins[name].precision, "pinned by the user plan", pins[name].score)
        elif target.rule(node) is None:
            decisions[name] = NodeDecision("float", f"{target.name} has no int8 {node.op_type}")
        elif observed is not None and in_subgraph(node, model) and not _seen(node, observed):
            decisions[name] = NodeDecision("float", _unseen_reason(bodies[id(node.graph)]))
        elif wide and target.rule(node).runs_a16(node):  # type: ignore[union-attr]
            decisions[name] = NodeDecision("int16", "a16w8: 16-bit activations wherever the target allows")
        else:
            decisions[name] = NodeDecision("int8", "naive: int8 wherever the target allows")
    return decisions


def _seen(node: ir.Node, observed: Container[str]) -> bool:
    return all(v.name in observed for v in node.outputs if is_float_value(v))


def _unseen_reason(body: str) -> str:
    if body == "If":
        return "inside an If branch that no calibration sample took"
    if body == "If in a loop":
        return "inside an If branch within a Loop/Scan body, which calibration cannot observe yet"
    return f"inside a {body} body that no calibration sample ran"
