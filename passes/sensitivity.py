"""Sensitivity analysis: what quantizing each group costs the model's outputs (an analysis).

One switchable fake-quant copy of the float graph serves every measurement: each quantized
tensor t is read through Where(on_t, DequantizeLinear(QuantizeLinear(t)), t), with on_t a
boolean graph input.  A configuration (a set of groups kept float) is one run with the
switches of the tensors no int8 group touches turned off; nothing is rebuilt, so hundreds of
candidates cost hundreds of inference passes on the search samples.  Per group g:

    local SQNR      SQNR of g's output with only g's tensors quantized (its own error)
    only            the budget's metric on the model's outputs with only g quantized
    without         the metric with every group but g quantized
    gain            without − all: what keeping g in float buys end to end (metric units)

A tensor stays quantized while any int8 group reads or writes it, so a tensor whose own
quantization is the loss (one channel 1000× the others, under one scale) only shows when
every group around it is float: the tensors whose own quantization error is largest are
candidates too (at most `MAX_TENSOR_CANDIDATES`).

Fake quantization runs in float, so the ranking is the quantization error as the plan
defines it; the chosen plan is then compiled for real and verified on ORT's integer kernels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from qcompile.budget import Budget, BudgetResult, stacked
from qcompile.data import LABELS_KEY, Sample
from qcompile.ir_utils import FreshNames, values_by_name
from qcompile.metrics import OutputKind
from qcompile.passes.insert_qdq import qdq_params
from qcompile.passes.quant_groups import QuantGroup, quantized_tensors_when
from qcompile.plan import QuantPlan, QuantSpec
from qcompile.quant_math import INT_RANGES, dequantize, quantize, sqnr_db
from qcompile.runtime import SessionSource, make_session, run_session

__all__ = [
    "switchable_model",
    "Switches",
    "BASE",
    "Evaluator",
    "own_sqnr_db",
    "Sensitivity",
    "rank_groups",
    "MAX_TENSOR_CANDIDATES",
]

MAX_TENSOR_CANDIDATES = 12


Switches = dict[str, tuple[dict[str, str], str]]  # tensor → ({variant: its switch input}, the value readers see)
BASE = ""  # the variant of the plan's own spec


def switchable_model(
    model: ir.Model, plan: QuantPlan, variants: Mapping[str, Mapping[str, QuantSpec]] | None = None
) -> tuple[ir.Model, Switches]:
    """A copy of float `model` whose quantized tensors each read through switches, one per variant:
    the plan's spec (`BASE`) and any other spec `variants` names for the tensor (a calibrator's)."""
    switchable = ir.from_proto(ir.to_proto(model))
    graph = switchable.graph
    values, fresh = values_by_name(graph), FreshNames(graph)
    switches = {}
    for name, spec in sorted(plan.quantized_tensors().items()):
        value = values.get(name)
        if spec.dtype == "int32" or value is None or not spec.is_resolved:
            continue
        options = {BASE: spec, **dict(sorted((variants or {}).get(name, {}).items()))}
        switches[name] = _insert_switches(graph, value, options, fresh)
    TopologicalSortPass()(switchable)
    return switchable, switches


def _insert_switches(
    graph: ir.Graph, value: ir.Value, options: Mapping[str, QuantSpec], fresh: FreshNames
) -> tuple[dict[str, str], str]:
    """value → Where(on_1, QDQ_1(value), Where(on_2, QDQ_2(value), ... value)), one switch per option."""
    name = value.name or ""
    readers, was_output = list(value.uses()), value.is_graph_output()
    nodes, by_variant, chosen = [], {}, value
    for variant, spec in reversed(list(options.items())):
        scale, zp, attrs = qdq_params(graph, name, spec, fresh)
        q_out = ir.Value(name=fresh(f"{name}_q"), type=ir.TensorType(ir.DataType[spec.dtype.upper()]))
        dq_out = ir.Value(name=fresh(f"{name}_dq"), type=value.type, shape=value.shape)
        switch = ir.Value(name=fresh(f"switch_{name}"), type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
        picked = ir.Value(name=fresh(f"{name}_switched"), type=value.type, shape=value.shape)
        nodes += [
            ir.Node("", "QuantizeLinear", [value, scale, zp], attributes=attrs, outputs=[q_out]),
            ir.Node("", "DequantizeLinear", [q_out, scale, zp], attributes=attrs, outputs=[dq_out]),
            ir.Node("", "Where", [switch, dq_out, chosen], outputs=[picked]),
        ]
        graph.inputs.append(switch)
        by_variant[variant], chosen = switch.name or "", picked
    producer = value.producer()
    if producer is None:
        graph.insert_before(graph.node(0), nodes) if len(graph) else graph.extend(nodes)
    else:
        graph.insert_after(producer, nodes)
    for use in readers:
        use.node.replace_input_with(use.idx, chosen)
    if was_output:
        graph.outputs[list(graph.outputs).index(value)] = chosen
        value.name, chosen.name = fresh(f"{name}_float"), name
    return by_variant, chosen.name or ""


@dataclass(frozen=True)
class Sensitivity:
    """One candidate for float: a group, or every group around one tensor (only then is the
    tensor itself left unquantized)."""

    candidate: str  # the group's name, or "tensor <name>"
    groups: tuple[str, ...]
    ops: tuple[str, ...]
    macs: int
    local_sqnr_db: float  # the group's output, or the tensor, with only the candidate quantized
    only: float  # the metric with only the candidate quantized
    without: float  # the metric with everything but the candidate quantized
    gain: float  # without − all

    def to_dict(self) -> dict:
        return asdict(self)


class Evaluator:
    """Runs configurations of the switchable model on the search samples, one session for all."""

    def __init__(
        self,
        model: ir.Model,
        plan: QuantPlan,
        groups: Sequence[QuantGroup],
        samples: Sequence[Sample],
        kinds: Mapping[str, OutputKind],
        budget: Budget,
        where: str = "the search samples",
        variants: Mapping[str, Mapping[str, QuantSpec]] | None = None,
    ):
        switchable, self.switches = switchable_model(model, plan, variants)
        self.choice: Mapping[str, str] = {}  # tensor → variant used when it is quantized (default BASE)
        self.where = where
        self.plan, self.groups, self.kinds, self.budget = plan, list(groups), kinds, budget
        self.samples = [{k: v for k, v in s.items() if k != LABELS_KEY} for s in samples]
        labels = [np.ravel(s[LABELS_KEY]) for s in samples if LABELS_KEY in s]
        self.labels = np.concatenate(labels) if labels and len(labels) == len(samples) else None
        self.outputs = [v.name or "" for v in model.graph.outputs]
        tensors = [g.output for g in self.groups] + [t for g in self.groups for t in g.tensors]
        self.probes = list(dict.fromkeys(self.seen(t) for t in tensors if t not in model.graph.initializers))
        self.session = make_session(SessionSource.of(switchable, extra_outputs=self.probes), threads=1)
        self.reference = self.run(on=set(), probes=self.probes)

    def seen(self, tensor: str) -> str:
        """The value readers of `tensor` see: its quantized version when its switch is on."""
        return self.switches[tensor][1] if tensor in self.switches else tensor

    def choosing(self, choice: Mapping[str, str]) -> Evaluator:
        """This evaluator (same session and reference), quantizing each tensor of `choice` with its variant."""
        other = copy.copy(self)
        other.choice = dict(choice)
        return other

    def run(self, on: set[str], probes: Sequence[str] = ()) -> dict[str, list[np.ndarray]]:
        """Model outputs (and the intermediate `probes`) on every sample, with the tensors in `on` quantized."""
        flags = {
            switch: np.array(tensor in on and self.choice.get(tensor, BASE) == variant)
            for tensor, (by_variant, _) in self.switches.items()
            for variant, switch in by_variant.items()
        }
        names = self.outputs + [p for p in probes if p not in self.outputs]
        out: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for sample in self.samples:
            for name, arr in run_session(self.session, {**sample, **flags}, names).items():
                out[name].append(np.asarray(arr))
        return out

    def score(self, float_groups: set[str], margin: float = 0.0) -> BudgetResult:
        """The budget on the model's outputs with `float_groups` in float and every other group in int8."""
        return self.judge(self.run(quantized_tensors_when(self.groups, float_groups)), margin)

    def judge(self, got: Mapping[str, list[np.ndarray]], margin: float = 0.0) -> BudgetResult:
        ref = {n: stacked(self.reference[n]) for n in self.outputs}
        got_stacked = {n: stacked(got[n]) for n in self.outputs}
        return self.budget.evaluate(ref, got_stacked, self.kinds, self.labels, margin, where=self.where)


def own_sqnr_db(values: list[np.ndarray], spec) -> float:
    """SQNR of a tensor quantized alone with its spec: its own rounding and clipping error."""
    x = np.concatenate([np.asarray(v, np.float32).ravel() for v in values])
    if spec.per_channel or spec.block_size is not None:
        return math.inf  # weights: per-channel, rarely the loss
    q = quantize(x, spec.scale_array(), spec.zero_point_array(), INT_RANGES[spec.dtype])
    return sqnr_db(x, dequantize(q, spec.scale_array(), spec.zero_point_array()))


def _candidates(evaluator: Evaluator, plan: QuantPlan) -> list[tuple[str, tuple[QuantGroup, ...], str]]:
    """(name, groups, probe): each group, then the `MAX_TENSOR_CANDIDATES` tensors touched by several
    groups whose own quantization is worst."""
    found: list[tuple[str, tuple[QuantGroup, ...], str]] = [(g.name, (g,), g.output) for g in evaluator.groups]
    touching: dict[str, list[QuantGroup]] = {}
    for g in evaluator.groups:
        for t in g.tensors:
            touching.setdefault(t, []).append(g)
    reference = {
        t: evaluator.reference[evaluator.seen(t)] for t in touching if evaluator.seen(t) in evaluator.reference
    }
    shared = [t for t, around in touching.items() if len(around) > 1 and t in reference]
    worst = sorted(shared, key=lambda t: (own_sqnr_db(reference[t], plan.tensors[t]), t))
    found += [(f"tensor {t}", tuple(touching[t]), t) for t in worst[:MAX_TENSOR_CANDIDATES]]
    return found


def rank_groups(
    evaluator: Evaluator, progress: Callable | None = None, exclude: frozenset[str] | set[str] = frozenset()
) -> tuple[float, list[Sensitivity]]:
    """The metric with every group quantized, and each candidate's sensitivity, most sensitive first
    (candidates holding a group named in `exclude` are measured as context only: never listed)."""
    all_quantized = evaluator.score(set()).value
    table = []
    candidates = [c for c in _candidates(evaluator, evaluator.plan) if not exclude.intersection(g.name for g in c[1])]
    for name, around, probe in (progress or (lambda it: it))(candidates):
        seen = evaluator.seen(probe)
        alone = evaluator.run({t for g in around for t in g.tensors}, probes=[seen])
        ref = np.concatenate([a.ravel() for a in evaluator.reference[seen]])
        local = sqnr_db(ref, np.concatenate([a.ravel() for a in alone[seen]]))
        without = evaluator.score({g.name for g in around}).value
        ops = tuple(op for g in around for op in g.ops)
        table.append(
            Sensitivity(
                name,
                tuple(g.name for g in around),
                ops,
                sum(g.macs for g in around),
                local,
                evaluator.judge(alone).value,
                without,
                without - all_quantized,
            )
        )
    table.sort(key=lambda s: (-s.gain, s.only, s.macs, s.candidate))
    return all_quantized, table
