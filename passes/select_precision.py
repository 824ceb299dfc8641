"""Choose each node's precision: an analysis that returns the decisions.

Policy `naive`: every node whose op the target can run in int8 gets int8; the
rest stay float.  A decision pinned in a user plan (`--plan`) wins over the
policy.  The `hybrid` policy starts from these decisions and keeps the groups its
search finds most sensitive in float (`qcompile.search`); `selective` also chooses each
tensor's calibrator (`qcompile.selective`).
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import name_of
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets.base import Target

__all__ = ["select_precision", "check_policy", "POLICIES"]

POLICIES = ("naive", "hybrid", "selective")


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise QCompileError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def select_precision(
    model: ir.Model, target: Target, policy: str = "naive", pinned: QuantPlan | None = None
) -> dict[str, NodeDecision]:
    """Node name → precision decision with its reason, for every node of `model` (which is only read)."""
    check_policy(policy)
    pins = pinned.nodes if pinned else {}
    unknown = sorted(set(pins) - {n.name for n in model.graph})
    if unknown:
        raise QCompileError(f"plan pins node(s) {unknown[:5]} that the model does not have")
    decisions: dict[str, NodeDecision] = {}
    for node in model.graph:
        name = name_of(node)
        if name in pins:
            decisions[name] = NodeDecision(pins[name].precision, "pinned by the user plan", pins[name].score)
        elif target.rule(node) is None:
            decisions[name] = NodeDecision("float", f"{target.name} has no int8 {node.op_type}")
        else:
            decisions[name] = NodeDecision("int8", "naive: int8 wherever the target allows")
    return decisions
