"""Remove nodes that compute the identity at inference time.

- `Dropout` in inference mode (`training_mode` absent or a constant false, mask
  output unused) → Identity: an onnxscript rewrite rule (`NoOpDropout`; upstream's
  `dropout_inference_rule` matches a `training_mode` *attribute*, which no opset has);
- `Cast` to the dtype its input already has → Identity: onnxscript's `no_op_cast_rule`;
- every `Identity` → its input: onnx-ir's `IdentityEliminationPass`, in all graphs
  and subgraphs.  A graph output keeps its name.

`SafeIdentityElimination` keeps an Identity between two graph outputs: onnx-ir 1.1's
pass renames the input to the output's name there, so the first output loses its name.
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
    """onnx-ir's pass, minus the case it gets wrong: an Identity from one graph output to another."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.inputs and node.inputs[0] is not None:
            if node.inputs[0].is_graph_output() and node.outputs[0].is_graph_output():
                return False
        return super()._try_eliminate_identity_node(node)


def cleanup_passes() -> ir.passes.Sequential:
    """No-op Dropout and Cast become Identity; then every removable Identity goes."""
    return ir.passes.Sequential(RewritePass([no_op_dropout_rule, no_op_cast_rule]), SafeIdentityElimination())
