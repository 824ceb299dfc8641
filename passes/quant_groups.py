"""Quantization groups: what a policy switches between int8 and float, and what each costs.

A group is an int8 node together with the activation its producer fuses (Conv + Relu: one
integer kernel, one decision).  Its tensors are the quantized tensors it reads or writes.
Leaving a group in float leaves a tensor unquantized only when no int8 group still touches
it: a float group between two int8 ones still reads and writes quantized tensors (the Q/DQ
transitions that a float island costs).  Data-movement ops with shared scales (Concat,
MaxPool, Reshape, ...) are groups like any other, so a Concat that forces one scale on very
different ranges can be found and kept float.

Weight MACs per group (Conv, ConvTranspose, Gemm, MatMul) come from the shapes calibration saw:

    Conv: |output| · (C_in / group) · Π kernel     ConvTranspose: |input| · (M / group) · Π kernel
    MatMul, Gemm: |output| · K
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir

from qcompile.ir_utils import name_of, single_consumer
from qcompile.plan import QuantPlan
from qcompile.targets.base import Target

__all__ = ["QuantGroup", "quant_groups", "weight_macs", "quantized_tensors_when"]


@dataclass(frozen=True)
class QuantGroup:
    name: str  # the group's first node
    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    tensors: tuple[str, ...]
    macs: int
    output: str  # what the group computes: its last node's output
    # an output the group's integer kernel can write in float (ORT's MatMulIntegerToFloat, QGemm): it stays
    # quantized only while an int8 reader touches it too (as `assign_specs` decides)
    soft_output: str | None = None


def _shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    observed = value.meta.get("qcompile.observed_shape")
    if observed is not None:
        return tuple(observed)
    if value.shape is None:
        return None
    # a symbolic or unknown (-1, as some exporters write it) dimension counts once: per item
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in value.shape)


def weight_macs(node: ir.Node) -> int:
    """Multiply-accumulates of a Conv/ConvTranspose/Gemm/MatMul with a constant weight, else 0."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return 0
    weight = node.inputs[1]
    w = weight.const_value.shape.numpy() if weight is not None and weight.const_value is not None else None
    out = _shape(node.outputs[0])
    if w is None or out is None:
        return 0
    size = math.prod(out)
    if node.op_type == "Conv":
        return size * math.prod(w[1:])
    if node.op_type == "ConvTranspose":  # each input element meets M/group · Π kernel weights
        return math.prod(_shape(node.inputs[0]) or (0,)) * math.prod(w[1:])
    if node.op_type == "MatMul":  # [.., K, N] weights (batched too), or a [K] vector
        return size * (w[-2] if len(w) >= 2 else w[0])
    trans_b = "transB" in node.attributes and node.attributes["transB"].as_int() == 1
    return size * (w[1] if trans_b else w[0])


def _int8(plan: QuantPlan, node: ir.Node | None) -> bool:
    decision = plan.nodes.get(node.name or "") if node is not None else None
    return decision is not None and decision.precision != "float"


def quant_groups(model: ir.Model, plan: QuantPlan, target: Target) -> list[QuantGroup]:
    """The int8 groups of `plan` on `model`, in graph order."""
    quantized = {n for n, s in plan.quantized_tensors().items() if s.dtype != "int32"}
    fused: set[str] = set()
    groups = []
    for node in model.graph.all_nodes():
        if not _int8(plan, node) or name_of(node) in fused:
            continue
        members = [node]
        rule = target.rule(node)
        nxt = single_consumer(node.outputs[0])
        if rule and rule.fuses_activation and nxt is not None and nxt.op_type in target.fusable_activations:
            if _int8(plan, nxt):
                members.append(nxt)
                fused.add(name_of(nxt))
        values = [v for m in members for v in (*m.inputs, *m.outputs) if v is not None and v.name in quantized]
        groups.append(
            QuantGroup(
                name_of(node),
                tuple(name_of(m) for m in members),
                tuple(m.op_type for m in members),
                tuple(dict.fromkeys(name_of(v) for v in values)),
                sum(weight_macs(m) for m in members),
                name_of(members[-1].outputs[0]),
                name_of(members[-1].outputs[0]) if len(members) == 1 and rule and rule.float_output_ok else None,
            )
        )
    return groups


def quantized_tensors_when(groups: Iterable[QuantGroup], float_groups: set[str]) -> set[str]:
    """The tensors still quantized when the groups named in `float_groups` run in float (a group's
    soft output only while another int8 group reads it)."""
    return {t for g in groups if g.name not in float_groups for t in g.tensors if t != g.soft_output}
