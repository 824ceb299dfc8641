"""Legality rules checked before any file is written.

Each rule is a small function over (model, plan, target) that yields
(node name, problem) pairs; the rule table is shared by every target, and the
target's own data (op table, dtypes, opset range) decides what passes.  The
first violation raises `LegalityError` naming the rule and the node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import onnx_ir as ir

from qcompile.ir_utils import onnx_opset
from qcompile.passes.absorb_channel_scales import per_channel_activation_q
from qcompile.pipeline import ReadOnlyPass
from qcompile.plan import QuantPlan
from qcompile.targets.base import LegalityError, Target

__all__ = ["check_legality", "CheckLegality", "RULES"]

Violation = tuple[str | None, str]  # (node name, problem)
Rule = Callable[[ir.Model, QuantPlan, Target], Iterator[Violation]]

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _opset_in_range(model: ir.Model, plan: QuantPlan, target: Target) -> Iterator[Violation]:
    v = onnx_opset(model)
    if not target.min_opset <= v <= target.max_opset:
        yield "<model>", f"opset {v} is outside {target.name}'s range [{target.min_opset}, {target.max_opset}]"


def _qdq_dtype(node: ir.Node) -> str:
    """The integer type of a Q/DQ: its zero point's, else its quantized side's, else ONNX's default uint8."""
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    side = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    for value in (zp, side):
        if value is not None and value.dtype is not None:
            return value.dtype.name.lower()
    return "uint8"


def _qdq_dtypes(model: ir.Model, plan: QuantPlan, target: Target) -> Iterator[Violation]:
    for node in model.graph.all_nodes():
        if node.op_type not in _QDQ:
            continue
        dtype = _qdq_dtype(node)
        if dtype not in target.allowed_qdq_dtypes:
            allowed = ", ".join(target.allowed_qdq_dtypes)
            yield node.name, f"{node.op_type} uses {dtype}; {target.name} allows {allowed}"


def _int8_ops_supported(model: ir.Model, plan: QuantPlan, target: Target) -> Iterator[Violation]:
    for node in model.graph.all_nodes():
        decision = plan.nodes.get(node.name or "")
        if decision is not None and decision.precision != "float" and target.rule(node) is None:
            yield (
                node.name,
                (f"{node.op_type} is planned as {decision.precision} but {target.name} has no integer {node.op_type}"),
            )
        elif (
            decision is not None
            and decision.precision == "int16"
            and not (target.a16_dtype is not None and (rule := target.rule(node)) is not None and rule.runs_a16(node))
        ):
            yield node.name, f"{node.op_type} is planned as int16 but {target.name} has no 16-bit {node.op_type}"


def _weights_prequantized(model: ir.Model, plan: QuantPlan, target: Target) -> Iterator[Violation]:
    for node in model.graph.all_nodes():
        if node.op_type == "QuantizeLinear" and node.inputs[0] is not None and node.inputs[0].is_initializer():
            constant = node.inputs[0].name
            yield node.name, f"QuantizeLinear on constant {constant!r} was not folded into a quantized initializer"


def _activation_scale_per_tensor(model: ir.Model, plan: QuantPlan, target: Target) -> Iterator[Violation]:
    if target.absorbs_channel_scales:  # folded into its Convs (passes/absorb_channel_scales refuses the rest)
        return
    for node in model.graph.all_nodes():
        if per_channel_activation_q(node):
            x = node.inputs[0].name  # type: ignore[union-attr]
            problem = f"activation {x!r} has a scale per channel; {target.name}'s integer kernels take one"
            yield node.name, problem + " scale per activation tensor"


RULES: dict[str, Rule] = {
    "opset-range": _opset_in_range,
    "qdq-dtype": _qdq_dtypes,
    "int8-op-supported": _int8_ops_supported,
    "weights-prequantized": _weights_prequantized,
    "activation-scale-per-tensor": _activation_scale_per_tensor,
}


class CheckLegality(ReadOnlyPass):
    """Every rule of `RULES` on the compiled model; the first violation raises `LegalityError`."""

    def __init__(self, plan: QuantPlan, target: Target):
        self.plan, self.target = plan, target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for rule_name, rule in RULES.items():
            for node_name, problem in rule(model, self.plan, self.target):
                raise LegalityError(f"{self.target.name}: rule {rule_name} fails at node {node_name!r}: {problem}")
        return ir.passes.PassResult(model, False)


def check_legality(model: ir.Model, plan: QuantPlan, target: Target) -> None:
    CheckLegality(plan, target)(model)
