"""Remove nodes that compute the identity at inference time.

- `Dropout` in inference mode (`training_mode` absent or a constant false, mask
  output unused) → Identity: an onnxscript rewrite rule (`NoOpDropout`; upstream's
  `dropout_inference_rule` matches a `training_mode` *attribute*, which no opset has);
- `Cast` to the dtype its input already has → Identity: onnxscript's `no_op_cast_rule`;
- every `Identity` → its input: onnx-ir's `IdentityEliminationPass`, in the main graph,
  subgraphs (If/Loop branches) and functions.  A graph output keeps its name.

`SafeIdentityElimination` keeps two Identities that onnx-ir 1.1's pass would remove wrongly:
one between two graph outputs (the input is renamed to the output's name, so the first
output loses its name), and one that returns an outer-scope value from a subgraph (ONNX
Runtime refuses a branch output that is not produced inside the branch).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass
from onnxscript.rewriter import MatchResult, RewritePass, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import no_op_cast_rule

from qcompile.ir_utils import const_array

__all__ = ["NoOpDropout", "SafeIdentityElimination", "cleanup_passes", "no_op_dropout_rule"]


class NoOpDropout(RewriteRuleClassBase):
    """`Dropout(x)` at inference (no training mode, mask unused) is `x`."""

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True, _outputs=["y"])

    def check(self, context, x, y):
        check = MatchResult()
        node = y.producer()
        if len(node.outputs) > 1 and node.outputs[1].uses():
            return check.fail("the dropout mask is used")
        mode = node.inputs[2] if len(node.inputs) > 2 else None
        if mode is not None:
            flag = const_array(mode)
            if flag is None or bool(flag):
                return check.fail("training_mode is not a constant false")
        return check

    def rewrite(self, op, x, y):
        return op.Identity(x)


no_op_dropout_rule = NoOpDropout.rule()


class SafeIdentityElimination(IdentityEliminationPass):
    """onnx-ir's pass, minus the two cases it gets wrong (see the module docstring)."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if node.op_type == "Identity" and node.inputs else None
        if source is not None and node.outputs[0].is_graph_output():
            if source.is_graph_output() or source.graph is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


def cleanup_passes() -> ir.passes.Sequential:
    """No-op Dropout and Cast become Identity; then every removable Identity goes."""
    return ir.passes.Sequential(RewritePass([no_op_dropout_rule, no_op_cast_rule]), SafeIdentityElimination())
