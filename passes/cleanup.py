"""Remove nodes that compute the identity at inference time.

- `Dropout` in inference mode (`training_mode` absent or a constant false, mask
  output unused) → Identity: an onnxscript rewrite rule (`NoOpDropout`; upstream's
  `dropout_inference_rule` matches a `training_mode` *attribute*, which no opset has);
- `Cast` to the dtype its input already has → Identity: onnxscript's `no_op_cast_rule`;
- a Cast round trip through a wider type, Cast(Cast(x: A, to=B), to=A) with every A
  value exact in B (float16 → float32 → float16, int32 → int64 → int32, ...) → x:
  `CastRoundTrip` (upstream's `cast_cast_rule` only shortens float→float16 chains);
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

__all__ = ["NoOpDropout", "CastRoundTrip", "SafeIdentityElimination", "cleanup_passes", "no_op_dropout_rule"]


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

_D = ir.DataType
# (A, B): every value of A is exactly a value of B
_EXACT_WIDENING = frozenset(
    [(_D.FLOAT16, b) for b in (_D.FLOAT, _D.DOUBLE)]
    + [(_D.BFLOAT16, b) for b in (_D.FLOAT, _D.DOUBLE)]
    + [(_D.FLOAT, _D.DOUBLE)]
    + [(_D.INT8, b) for b in (_D.INT16, _D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE)]
    + [(_D.INT16, b) for b in (_D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE)]
    + [(_D.INT32, b) for b in (_D.INT64, _D.DOUBLE)]
    + [(_D.UINT8, b) for b in (_D.INT16, _D.INT32, _D.INT64, _D.UINT16, _D.UINT32, _D.UINT64, _D.FLOAT)]
    + [(_D.UINT16, b) for b in (_D.INT32, _D.INT64, _D.UINT32, _D.UINT64, _D.FLOAT, _D.DOUBLE)]
    + [(_D.UINT32, b) for b in (_D.INT64, _D.UINT64, _D.DOUBLE)]
)


class CastRoundTrip(RewriteRuleClassBase):
    """`Cast(Cast(x, to=B), to=A)` with x of type A and A exact in B is `x`."""

    def pattern(self, op, x, wide_type, back_type):
        return op.Cast(op.Cast(x, to=wide_type), to=back_type)

    def check(self, context, x, wide_type, back_type):
        check = MatchResult()
        if x.dtype is None or int(x.dtype) != back_type.as_int():
            return check.fail("the round trip does not return to the input's type")
        if (x.dtype, _D(wide_type.as_int())) not in _EXACT_WIDENING:
            return check.fail(f"{x.dtype.name} is not exact in {_D(wide_type.as_int()).name}")
        return check

    def rewrite(self, op, x, wide_type, back_type):
        return op.Identity(x)


cast_round_trip_rule = CastRoundTrip.rule()


class SafeIdentityElimination(IdentityEliminationPass):
    """onnx-ir's pass, minus the two cases it gets wrong (see the module docstring)."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if node.op_type == "Identity" and node.inputs else None
        if source is not None and node.outputs[0].is_graph_output():
            if source.is_graph_output() or source.graph is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


def cleanup_passes() -> ir.passes.Sequential:
    """No-op Dropout, Cast and Cast round trips become Identity; then every removable Identity goes."""
    rules = RewritePass([no_op_dropout_rule, no_op_cast_rule, cast_round_trip_rule])
    return ir.passes.Sequential(rules, SafeIdentityElimination())
