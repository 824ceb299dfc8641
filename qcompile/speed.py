"""Speed-aware precision: keep in float the groups whose int8 kernels are slower on this CPU.

After the selective policy's accuracy search, with the plan it chose:

1. profile the float graph and the int8 model at one thread (`qcompile.profile`), per node;
2. per group g:  int8(g) = its kernels + the Q/DQ nodes of its tensors,  float(g) = its kernels;
   g is slower in int8 when int8(g) > (1 + TOLERANCE)·float(g) + MIN_GAP_US (a group whose
   float kernels the profile does not show is not judged);
3. if the caller's budget check passes with them float, the plan with every such group in
   float is compiled and timed against the plan as it is
   (median latency at one thread, `ROUNDS` interleaved rounds); it is kept only if faster by
   more than 2%: a float island also costs Q/DQ transitions at its edges, which only the
   whole-model timing sees;
4. never slower than float: if the plan is still slower than the float model at one thread (same
   interleaved timing) by more than `NOISE` (PP-OCRv4 det: a plan timed 1.02× float here, 0.84×
   in the card's own timing, and this step floated 64 groups on that 2%), the groups still in
   int8 go float in the order of what int8 costs them over float in the profile (most first),
   1, 2, 4, … at a time, each set timed, until the model is no slower than float (with every
   group float it is the float graph); each set also has to keep the budget.  The card then
   says that int8 did not pay on this CPU for those groups.

ORT's int8 kernels and their speed depend on the CPU (VNNI, AMX, plain AVX2), so these
decisions are measurements: the plan records both times per group, and it is not
reproducible byte for byte across machines or runs (compile with `measure_latency=False`,
`--no-latency`, to skip this step).  Verification then measures the accuracy of the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qcompile.judge import built
from qcompile.passes.quant_groups import QuantGroup, quant_groups
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.profile import node_times_us
from qcompile.runtime import SessionSource, interleaved_medians_ms, make_session
from qcompile.targets.base import Target

__all__ = ["keep_fast", "group_times", "compiled", "SpeedReport", "TOLERANCE", "MIN_GAP_US"]

TOLERANCE = 0.1
MIN_GAP_US = 5.0
ROUNDS = 3
NOISE = 0.03  # two interleaved medians of 3 rounds this close are the same speed
CONFIRM_ROUNDS = 9  # a plan read slower than float is timed again, longer, before anything goes float


@dataclass
class SpeedReport:
    """What the speed step measured: per group slower in int8, its times; the whole model's."""

    slower: dict[str, dict[str, float]] = field(default_factory=dict)  # group → {"int8_us", "float_us"}
    kept_float: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # "float", "int8", "with float groups"
    budget_blocked: bool = False  # with the slower groups float, the budget would not hold
    # step 4, when the plan was slower: {"float_ms", "plan_ms", "tried": [[k, its ms / float's], ...], "kept_float"}
    never_slower: dict = field(default_factory=dict)


def compiled(model: ir.Model, plan: QuantPlan) -> SessionSource:
    """A copy of float `model` quantized with `plan` (Q/DQ inserted, scales folded, any scale per channel
    of an activation moved into the Convs beside it)."""
    return SessionSource.of(built(model, plan))


def group_times(groups: list[QuantGroup], f: Mapping[str, float], q: Mapping[str, float]) -> dict[str, tuple]:
    times = {}
    for g in groups:
        qdq = sum(q.get(f"{t}_Q", 0.0) + q.get(f"{t}_DQ", 0.0) for t in g.tensors)
        times[g.name] = (sum(q.get(n, 0.0) for n in g.nodes) + qdq, sum(f.get(n, 0.0) for n in g.nodes))
    return times


def keep_fast(
    model: ir.Model,
    plan: QuantPlan,
    target: Target,
    sample: Mapping[str, np.ndarray],
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    pinned: frozenset[str] | set[str] = frozenset(),
    keeps_budget: Callable[[set[str]], bool] | None = None,
) -> tuple[dict[str, NodeDecision], SpeedReport]:
    """`plan`'s node decisions with the groups slower in int8 kept float when that makes the model
    faster (and, with `keeps_budget`, when it says the budget holds with them float too), and
    what was measured.  `assign(decisions)` makes the plan for other decisions."""
    report = SpeedReport()
    groups = [g for g in quant_groups(model, plan, target) if not pinned.intersection(g.nodes)]
    producers = {v.name: n.name for n in model.graph.all_nodes() for v in n.outputs if v.name and n.name}
    float_source, int8_source = SessionSource.of(model), compiled(model, plan)
    f, q = node_times_us(float_source, sample, producers), node_times_us(int8_source, sample)
    times = group_times(groups, f, q)
    for name, (int8_us, float_us) in sorted(times.items()):
        if float_us > 0 and int8_us > (1 + TOLERANCE) * float_us + MIN_GAP_US:  # 0: no float kernel seen
            report.slower[name] = {"int8_us": round(int8_us, 1), "float_us": round(float_us, 1)}
    decisions = _keep_slower_float(
        model, plan, groups, (float_source, int8_source), sample, assign, keeps_budget, report
    )
    order = sorted(
        (g for g in groups if any(getattr(decisions.get(n), "precision", None) != "float" for n in g.nodes)),
        key=lambda g: (times[g.name][1] - times[g.name][0], g.name),
    )
    return _never_slower(model, decisions, order, float_source, sample, assign, keeps_budget, report), report


def _float(decisions: Mapping[str, NodeDecision], groups: list[QuantGroup], reason: str) -> dict[str, NodeDecision]:
    trial = dict(decisions)
    for g in groups:
        for node in g.nodes:
            trial[node] = NodeDecision("float", reason)
    return trial


def _keep_slower_float(
    model: ir.Model,
    plan: QuantPlan,
    groups: list[QuantGroup],
    sources: tuple[SessionSource, SessionSource],
    sample: Mapping[str, np.ndarray],
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    keeps_budget: Callable[[set[str]], bool] | None,
    report: SpeedReport,
) -> dict[str, NodeDecision]:
    """Steps 2-3: the groups in `report.slower` float, if the budget allows and the model gets faster."""
    decisions = dict(plan.nodes)
    if not report.slower:
        return decisions
    if keeps_budget is not None and not keeps_budget(set(report.slower)):
        report.budget_blocked = True
        return decisions
    trial = dict(decisions)
    for g in groups:
        if g.name in report.slower:
            times = report.slower[g.name]
            reason = (
                f"selective: float, its int8 kernels are slower here ({times['int8_us']:g} µs vs {times['float_us']:g})"
            )
            trial = _float(trial, [g], reason)
    all_sources = [*sources, compiled(model, assign(trial))]
    float_ms, int8_ms, trial_ms = interleaved_medians_ms(
        [make_session(s, threads=1) for s in all_sources], sample, ROUNDS
    )
    report.latency_ms = {"float": float_ms, "int8": int8_ms, "with float groups": trial_ms}
    if trial_ms < 0.98 * int8_ms:
        report.kept_float = sorted(report.slower)
        return trial
    return decisions


def _never_slower(
    model: ir.Model,
    decisions: dict[str, NodeDecision],
    order: list[QuantGroup],
    float_source: SessionSource,
    sample: Mapping[str, np.ndarray],
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    keeps_budget: Callable[[set[str]], bool] | None,
    report: SpeedReport,
) -> dict[str, NodeDecision]:
    """Step 4: where the plan reads slower than float (beyond `NOISE`), and reads so again when
    timed over `CONFIRM_ROUNDS`, the first of the first 1, 2, 4, … groups of `order` in float that
    makes the model no slower than float (all of them: the float graph, kept without timing)."""
    float_session = make_session(float_source, threads=1)
    plan_session = None
    if report.latency_ms:  # step 3 timed the plan as it stands against float already
        lat = report.latency_ms
        float_ms, plan_ms = lat["float"], lat["with float groups" if report.kept_float else "int8"]
    else:
        plan_session = make_session(compiled(model, assign(decisions)), threads=1)
        float_ms, plan_ms = interleaved_medians_ms([float_session, plan_session], sample, ROUNDS)
    if plan_ms <= (1 + NOISE) * float_ms or not order:
        return decisions
    first = plan_ms / float_ms
    plan_session = plan_session or make_session(compiled(model, assign(decisions)), threads=1)
    float_ms, plan_ms = interleaved_medians_ms([float_session, plan_session], sample, CONFIRM_ROUNDS)
    if plan_ms <= (1 + NOISE) * float_ms:  # the first timing's slowness was noise
        report.never_slower = {"float_ms": float_ms, "plan_ms": plan_ms, "first": first, "confirmed": False}
        return decisions
    report.never_slower = {"float_ms": float_ms, "plan_ms": plan_ms, "first": first, "tried": [], "kept_float": []}
    reason = f"selective: float, the int8 model was slower than float here ({plan_ms:.3g} ms vs {float_ms:.3g} ms)"
    already = set(report.kept_float)
    sizes = sorted({min(2**i, len(order)) for i in range(len(order).bit_length() + 1)})  # 1, 2, 4, …, all
    for k in sizes:
        names = [g.name for g in order[:k]]
        if keeps_budget is not None and not keeps_budget(already | set(names)):
            continue
        trial = _float(decisions, order[:k], reason)
        if k == len(order):  # every group float: the float graph, no timing needed
            report.never_slower["kept_float"] = sorted(names)
            return trial
        source = compiled(model, assign(trial))
        base_ms, trial_ms = interleaved_medians_ms([float_session, make_session(source, threads=1)], sample, ROUNDS)
        report.never_slower["tried"].append([k, trial_ms / base_ms])
        if trial_ms <= base_ms:
            report.never_slower["kept_float"] = sorted(names)
            return trial
    return decisions
