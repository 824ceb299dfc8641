"""The precision search on the target's own runtime, for targets whose numerics ONNX Runtime does
not reproduce (an NPU: QNN's HTP rounds each layer its own way, and on deep models the CPU emulation
of the same QDQ file is no proxy for it).

On an NPU float is no option (`Target.float_runs` False), so the search does not look for float
groups on ORT (`npu_search`): it ranks the groups by sensitivity there (each quantized alone and all
but it, as `passes.sensitivity` does, on the first `RANK_SAMPLES` search samples; cut by the time
budget, the rest in graph order).  The plan is
then built, lowered and run on the target's runtime on the search samples.  If the budget fails
there, 8-bit nodes that have a 16-bit kernel are promoted to 16-bit activations in that order (a
node together with the Relu/Clip it fuses): the smallest count k that keeps the budget is found by
bisection, assuming that more 16-bit nodes never hurt (log2(n) + 2 runtime evaluations).  If even
all of them do not keep it, all are promoted (the best the target offers) and the card says the
budget is not met.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget
from qcompile.data import Sample
from qcompile.deadline import Deadline
from qcompile.ir_utils import single_consumer
from qcompile.judge import SampleJudge, built
from qcompile.metrics import OutputKind
from qcompile.passes.convert_widths import ConvertWidths
from qcompile.passes.quant_groups import quant_groups
from qcompile.passes.sensitivity import rank_groups
from qcompile.passes.switchable import Evaluator
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.search import SearchReport, rank_samples, ranking_evaluator
from qcompile.streams import feedback_of
from qcompile.targets.base import Target

__all__ = ["widen_on_target", "npu_search", "WIDENED"]

WIDENED = "16-bit activations: the budget failed on the target's runtime with this node at 8 bits"


def _candidates(
    model: ir.Model, target: Target, decisions: Mapping[str, NodeDecision], ranked: Sequence[str]
) -> list[tuple[str, ...]]:
    """8-bit nodes that run at 16 bits, each with the Relu/Clip it fuses (one kernel, one width), the
    search's ranked ones first, then in graph order."""
    nodes = {n.name or "": n for n in model.graph.all_nodes()}

    def widenable(name: str) -> bool:
        d, node = decisions.get(name), nodes.get(name)
        rule = target.rule(node) if node is not None else None
        return d is not None and d.precision == "int8" and rule is not None and rule.runs_a16(node)  # type: ignore[arg-type]

    groups: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for name in dict.fromkeys([*ranked, *nodes]):
        if name in taken or not widenable(name):
            continue
        nxt = single_consumer(nodes[name].outputs[0]) if nodes[name].outputs else None
        rule = target.rule(nodes[name])
        fused = (
            nxt is not None and rule is not None and rule.fuses_activation and nxt.op_type in target.fusable_activations
        )
        group = (name, nxt.name or "") if fused and widenable(nxt.name or "") else (name,)  # type: ignore[union-attr]
        taken.update(group)
        groups.append(group)
    return groups


def widen_on_target(
    model: ir.Model,
    target: Target,
    decisions: Mapping[str, NodeDecision],
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    samples: Sequence[Sample],
    kinds: Mapping[str, OutputKind],
    budget: Budget,
    margin: float,
    ranked: Sequence[str] = (),
    means: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, NodeDecision], dict]:
    """`decisions` with as few nodes widened to 16 bits as keep the budget on the target's runtime; a report."""
    if target.lower is None or target.a16_dtype is None or not samples:
        return dict(decisions), {}
    quiet = dataclasses.replace(target, options={**target.options, "context": False})
    judge = SampleJudge(model, samples, kinds, budget, margin)
    order = _candidates(model, target, decisions, ranked)
    trials: list[dict] = []

    def trial(k: int) -> tuple[dict[str, NodeDecision], bool]:
        decs = {**decisions, **{n: NodeDecision("int16", WIDENED) for g in order[:k] for n in g}}
        candidate = built(model, assign(decs), ConvertWidths(target), means=means)
        result = judge.evaluate(quiet.lower(candidate, quiet).runner)  # type: ignore[misc]
        trials.append({"widened": k, "value": result.value, "met": result.met})
        return decs, result.met

    chosen, met = trial(0)
    if not met and order:
        widest, met = trial(len(order))
        chosen, lo, hi = widest, 0, len(order)
        while met and hi - lo > 1:  # the budget fails at lo and holds at hi
            mid = (lo + hi) // 2
            decs, ok = trial(mid)
            lo, hi = (lo, mid) if ok else (mid, hi)
            chosen = decs if ok else chosen
    groups = [g for g in order if chosen[g[0]].precision == "int16"]
    final = next(t for t in reversed(trials) if t["widened"] == len(groups))
    report = {
        "runtime": target.name,
        "widened": [n for g in groups for n in g],
        "trials": trials,
        "met": final["met"],
        "value": final["value"],
    }
    return chosen, report


def npu_search(
    model: ir.Model,
    plan: QuantPlan,
    target: Target,
    samples: Sequence[Sample],
    kinds: Mapping[str, OutputKind],
    budget: Budget,
    margin: float,
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    policy: str,
    pinned: set[str],
    progress: Callable | None = None,
    deadline: Deadline | None = None,
    means: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, NodeDecision], SearchReport]:
    """8-bit or 16-bit per group for a target without float: ranked on ORT, decided on the target
    (with the calibration's channel `means`, every candidate's biases corrected)."""
    groups = quant_groups(model, plan, target)
    evaluator = Evaluator(
        model, plan, groups, samples[: rank_samples(bool(feedback_of(kinds)))], kinds, budget, means=means
    )
    fixed = {g.name for g in groups if pinned.intersection(g.nodes)}
    ranker, tie_break = ranking_evaluator(evaluator)
    table = rank_groups(ranker, progress, exclude=fixed, deadline=deadline, tie_break=tie_break)[1]
    all_int8 = evaluator.score(set()).value
    ranked = [g for s in table for g in s.groups]
    free = {n: d for n, d in plan.nodes.items() if n not in pinned}
    decisions, found = widen_on_target(model, target, free, assign, samples, kinds, budget, margin, ranked, means)
    decisions.update({n: d for n, d in plan.nodes.items() if n in pinned})
    bound = {"floor": budget.floor} if budget.floor is not None else {"max_drop": budget.max_drop}
    report = SearchReport(
        budget.metric.name,
        bound,
        margin,
        len(samples),
        all_int8,
        found.get("value", all_int8),
        bool(found.get("met", False)),
        evaluations=2 * len(table) + 1 + len(found.get("trials", [])),
        table=table,
        policy=policy,
        cut=deadline is not None and deadline.cut,
        trials=evaluator.trials,
        on_target=found,
        ranked_by={"samples": len(ranker.samples), "tie_break": tie_break.metric.name} if tie_break else None,
        streams=evaluator.streams.describe() if evaluator.streams else None,
    )
    return decisions, report
