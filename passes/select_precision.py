"""Choose each node's precision (an analysis: it fills `plan.nodes`).

Policy `naive`: every node whose op the target can run in int8 gets int8; the
rest stay float.  A decision pinned in a user plan (`--plan`) wins over the
policy.  Hybrid and selective policies plug in here.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.pipeline import CompilePass
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets.base import Target

__all__ = ["SelectPrecision", "POLICIES"]

POLICIES = ("naive",)


class SelectPrecision(CompilePass):
    requires = ("named",)
    provides = ("precision_selected",)
    mutates = False

    def __init__(self, plan: QuantPlan, target: Target, policy: str = "naive", pinned: QuantPlan | None = None):
        super().__init__()
        if policy not in POLICIES:
            raise QCompileError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.plan, self.target, self.policy, self.pinned = plan, target, policy, pinned

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pinned = self.pinned.nodes if self.pinned else {}
        names = {n.name for n in model.graph}
        unknown = sorted(set(pinned) - names)
        if unknown:
            raise QCompileError(f"plan pins node(s) {unknown[:5]} that the model does not have")
        for node in model.graph:
            if node.name in pinned:
                decision = pinned[node.name]
                self.plan.nodes[node.name] = NodeDecision(decision.precision, "pinned by the user plan", decision.score)
            elif self.target.rule(node) is None:
                self.plan.nodes[node.name] = NodeDecision("float", f"{self.target.name} has no int8 {node.op_type}")
            else:
                self.plan.nodes[node.name] = NodeDecision("int8", f"{self.policy}: int8 wherever the target allows")
        self.plan.meta["policy"] = self.policy
        return ir.passes.PassResult(model, False)
