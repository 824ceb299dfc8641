"""The hybrid policy: int8 everywhere but the groups that hurt the budget most, kept in float.

On the search samples (calibration samples set aside, a uniform sample of the stream: see
`qcompile.search_split`; never the held-out evaluation data):

1. rank the naive plan's groups by sensitivity (`qcompile.passes.sensitivity`); a budget whose
   metric may move in steps (top-1 agreement, a task's accuracy, a user's function: a line read
   right or wrong) hardly moves when one group changes, so its ranking runs on the first
   `RANK_SAMPLES` search samples only, and the default metric (worst-channel SQNR, graded),
   judged on the same runs, orders the candidates whose gains tie; the steps below judge the
   budget's metric on every search sample;
2. first every candidate without weight MACs (an Add, a Softmax, a Concat) that gains when float,
   all at once, if that does not make the metric worse: float there costs no integer compute,
   which is what the search keeps (one at a time, each gains little: their errors add up along
   a residual stream); step 3 gives back what is not needed;
   then groups in rank order (the largest gain first; among equal gains, the fewest MACs),
   keeping each in float only if that improves the metric, until the budget holds with
   `margin` to spare;
3. give back to int8, last chosen first, each float candidate the budget can do without, then
   each group of a chosen tensor candidate (which floats every group around one tensor);
4. if the budget still does not hold (several groups each break it alone), build up from float
   instead (`qcompile.build_up`): every group float, then quantized one at a time, the least
   harmful alone first, each kept int8 if the budget still holds.

The margin is what the budget keeps in reserve for data the search did not see: verification
then measures the budget on held-out data, and the card reports both values.  A metric that may
move in steps (a count of lines read right, on 32 lines, moves 3 points a line) keeps at least
its sampling error in reserve: where a choice meets the budget, the jackknife standard error of
the budget's quantity over the search samples (`qcompile.budget.jackknife_error`; a recurrent
model's steps are not independent, so over its streams, `Streams.blocks`) replaces a smaller
margin.  Without a
budget the search aims at `DEFAULT_BUDGET` (worst-channel SQNR ≥ 20 dB).

Every trial runs on the naive plan's scales.  The final plan is assigned again with the chosen
precisions, and a scale tied across a node's inputs (Concat's, say) may widen or narrow once a
neighbour is float: the search's figure is an estimate of the compiled model's, which
verification measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget, parse_metric
from qcompile.build_up import build_up
from qcompile.confirm import compiled_judge, confirm_compiled
from qcompile.data import Sample
from qcompile.deadline import Deadline
from qcompile.metrics import OutputKind
from qcompile.passes.quant_groups import QuantGroup, quant_groups, quantized_tensors_when
from qcompile.passes.sensitivity import Sensitivity, rank_groups
from qcompile.passes.switchable import Evaluator
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.streams import STREAM_RUN
from qcompile.targets.base import Target

__all__ = [
    "DEFAULT_BUDGET", "RANK_SAMPLES", "SearchReport", "hybrid_search", "default_margin", "float_search",
    "FloatSearch", "ranking_evaluator", "sampling_error_at",
]  # fmt: skip

DEFAULT_BUDGET = Budget(parse_metric("fidelity"), floor=20.0)
_DB_METRICS = ("fidelity", "sqnr")


RANK_SAMPLES = 8  # a metric that moves in steps ranks on these first search samples (the default metric breaks ties)
DB_MARGIN = 1.0  # dB: 26% more noise power than the budget allows is kept in reserve
_DISTANCE_MARGIN = 1 - 10 ** (-DB_MARGIN / 10)  # the same reserve, as a share of a distance to perfect


def default_margin(budget: Budget) -> float:
    """What the search keeps in reserve above the budget, for data it did not see: 1 dB for dB
    metrics; for metrics whose distance to perfect is what grows with noise (cosine and top-1
    agreement below 1, max-rel-error above 0) the same 1 dB as a share of that distance, 20.6%
    of 1 − floor or of |floor| (0.0021 for cosine ≥ 0.99: a fixed 0.01 would ask for a cosine
    of 1); 0.01 for user metrics; for a task budget at most half the allowed drop (a margin as
    large as the drop would ask int8 to beat float)."""
    if budget.max_drop is not None:
        return min(0.01, budget.max_drop / 2)
    name, floor = budget.metric.name.split(":")[0], budget.floor
    if name in _DB_METRICS:
        return DB_MARGIN
    if name in ("cosine", "top1") and floor is not None:
        return _DISTANCE_MARGIN * max(1.0 - floor, 0.0)
    if name == "max-rel-error" and floor is not None:
        return _DISTANCE_MARGIN * abs(floor)
    return 0.01


@dataclass
class SearchReport:
    metric: str
    bound: dict
    margin: float
    search_samples: int
    all_int8: float
    chosen: float
    met: bool
    float_groups: list[str] = field(default_factory=list)
    evaluations: int = 0
    table: list[Sensitivity] = field(default_factory=list)
    policy: str = "hybrid"
    unseen: bool = False  # the search samples were set aside from calibration
    cut: bool = False  # the time budget ran out: the best choice found by then
    speed: dict | None = None  # selective: what the speed step measured (qcompile.speed.SpeedReport)
    trials: list[dict] = field(default_factory=list)  # every configuration scored (Evaluator.trials)
    chosen_int8_share: float = 1.0  # weight MACs the chosen groups leave in int8, of the groups' total
    calibrator: str | None = None  # selective: the calibrator of every tensor not listed below
    calibrators: dict[str, str] = field(default_factory=dict)  # selective: tensor → its own calibrator
    a16: dict = field(default_factory=dict)  # the float nodes tried at 16 bits (qcompile.promote16)
    on_target: dict = field(default_factory=dict)  # 8-bit nodes widened on the target's runtime (target_search)
    undecided: dict = field(default_factory=dict)  # samples the float model is undecided on: in the stream, searched
    ranked_by: dict | None = None  # {"samples", "tie_break"}: the ranking's samples and tie-breaking metric
    sampling_error: float | None = None  # a stepwise metric's jackknife error at the choice (the least reserve)
    streams: dict | None = None  # a recurrent model's search samples, run as streams (qcompile.streams)
    built_up: bool = False  # the greedy missed; the float groups are what building up from float left
    confirmed: dict | None = None  # the choice judged as compiled, on ORT (qcompile.confirm)

    def describe(self, top: int = 15) -> dict:
        data = asdict(self)
        data["table"] = [s.to_dict() for s in self.table[:top]]
        data["ranked"] = len(self.table)
        return data


def hybrid_search(
    model: ir.Model,
    plan: QuantPlan,
    target: Target,
    samples: Sequence[Sample],
    kinds: dict[str, OutputKind],
    budget: Budget,
    margin: float,
    pinned: frozenset[str] | set[str] = frozenset(),
    progress: Callable | None = None,
    executor: Executor | None = None,
    deadline: Deadline | None = None,
    means: Mapping[str, np.ndarray] | None = None,
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan] | None = None,
) -> tuple[dict[str, NodeDecision], SearchReport]:
    """Node decisions for `plan`'s model under `budget`, and how the search got there.

    Groups with a pinned node are measured as the pin has them but are never candidates; the
    ranking's runs go to `executor` when given (same decisions whatever the executor); with the
    calibration's channel `means`, candidates are scored with their biases corrected.  With
    `assign` (decisions → the plan compile will lower), the choice is confirmed on the model as
    compiled (`qcompile.confirm`)."""
    groups = quant_groups(model, plan, target)
    evaluator = Evaluator(
        model, plan, groups, samples, kinds, budget, "the calibration data", executor=executor, means=means
    )
    found = float_search(evaluator, pinned, margin, progress, deadline)
    confirmed = None
    if assign is not None:
        plan_of = lambda f: assign(f.decisions(plan, "hybrid"))  # noqa: E731
        compiled = compiled_judge(model, target, samples, kinds, budget, margin, plan_of, means)
        rank = lambda: ranked(evaluator, found.fixed, progress, deadline)  # noqa: E731
        found, confirmed = confirm_compiled(found, compiled, deadline or Deadline(), rank)
    report = found.report(budget, margin, len(samples), "hybrid")
    report.confirmed = confirmed
    report.cut, report.trials = deadline is not None and deadline.cut, evaluator.trials
    report.sampling_error = sampling_error_at(evaluator, found)
    report.streams = evaluator.streams.describe(blocks=True) if evaluator.streams else None
    return found.decisions(plan, "hybrid"), report


@dataclass
class FloatSearch:
    """What `float_search` found: the ranking, the groups kept float and the metric with them."""

    groups: list[QuantGroup]
    fixed: set[str]
    all_int8: float
    table: list[Sensitivity]
    chosen: list[Sensitivity]
    result: Any
    evaluations: int
    metric: str
    cut: bool = False  # the deadline stopped it
    ranked_by: dict | None = None  # the ranking's samples and tie-breaking metric, when it had one
    built_up: bool = False  # the float groups came from building up from float (qcompile.build_up)

    @property
    def float_macs(self) -> int:
        floats = _floats(self.chosen)
        return sum(g.macs for g in self.groups if g.name in floats)

    def report(self, budget: Budget, margin: float, samples: int, policy: str) -> SearchReport:
        bound = {"floor": budget.floor} if budget.floor is not None else {"max_drop": budget.max_drop}
        return SearchReport(
            budget.metric.name,
            bound,
            margin,
            samples,
            self.all_int8,
            self.result.value,
            self.result.met,
            sorted(_floats(self.chosen)),
            self.evaluations,
            self.table,
            policy,
            chosen_int8_share=1.0 - self.float_macs / total if (total := sum(g.macs for g in self.groups)) else 1.0,
            ranked_by=self.ranked_by,
            built_up=self.built_up,
        )

    def decisions(self, plan: QuantPlan, policy: str) -> dict[str, NodeDecision]:
        free = [g for g in self.groups if g.name not in self.fixed]
        label = f"{policy} (built up from float)" if self.built_up else policy
        return _decisions(plan, free, self.table, _floats(self.chosen), self.metric, label, self.cut)


def float_search(
    evaluator: Evaluator,
    pinned: frozenset[str] | set[str],
    margin: float,
    progress: Callable | None = None,
    deadline: Deadline | None = None,
    ranking: FloatSearch | None = None,
) -> FloatSearch:
    """Rank `evaluator`'s groups (unless all int8 already meets the budget with `margin`), then
    keep the fewest in float that meet it (see the module docstring).  When `deadline` expires,
    each step stops where it is: the best choice found so far wins.  A `ranking` made on another
    configuration of the same groups (another calibrator choice) orders the candidates instead
    of a ranking of its own: the greedy step and the give-back still measure every choice."""
    deadline = deadline or Deadline()
    fixed = {g.name for g in evaluator.groups if pinned.intersection(g.nodes)}
    metric = evaluator.budget.metric.name
    everything = evaluator.score(set(), margin)
    if everything.met:  # every group int8 keeps the budget with its margin: nothing to rank
        return FloatSearch(evaluator.groups, fixed, everything.value, [], [], everything, 1, metric)
    if ranking is None:
        table, evaluations, ranked_by = ranked(evaluator, fixed, progress, deadline)
    else:
        table, evaluations, ranked_by = list(ranking.table), 1, ranking.ranked_by
    chosen, result, greedy = _greedy(evaluator, table, margin, deadline)
    evaluations += greedy
    built_up = False
    if not result.met and table and not deadline.expired():  # several groups break it alone: from float up
        kept, built, steps = build_up(evaluator, table, fixed, margin, deadline)
        evaluations += steps
        if built.met:
            chosen, result, built_up = kept, built, True
    return FloatSearch(
        evaluator.groups, fixed, everything.value, table, chosen, result, evaluations, metric, deadline.cut, ranked_by,
        built_up,
    )  # fmt: skip


def ranked(
    evaluator: Evaluator, fixed: set[str], progress: Callable | None = None, deadline: Deadline | None = None
) -> tuple[list[Sensitivity], int, dict | None]:
    """`evaluator`'s candidates ranked (groups in `fixed` left out): the table, the evaluations it
    took, and what ranked them when the budget's own metric could not alone."""
    ranker, tie_break = ranking_evaluator(evaluator)
    table = rank_groups(ranker, progress, exclude=fixed, deadline=deadline, tie_break=tie_break)[1]
    ranked_by = {"samples": len(ranker.samples), "tie_break": tie_break.metric.name} if tie_break else None
    return table, 2 * len(table) + 2, ranked_by


def sampling_error_at(evaluator: Evaluator, found: FloatSearch) -> float | None:
    """The sampling error of a stepwise metric at `found`'s choice (None for a graded metric)."""
    if evaluator.budget.metric.graded:
        return None
    return evaluator.sampling_error(evaluator.run(quantized_tensors_when(evaluator.groups, _floats(found.chosen))))


def ranking_evaluator(evaluator: Evaluator) -> tuple[Evaluator, Budget | None]:
    """What ranks `evaluator`'s candidates, and the budget that breaks ties: itself alone when its
    budget's metric is graded, else the first `RANK_SAMPLES` samples (a recurrent model's: its first
    run of `STREAM_RUN` steps, for the state's error to build up) with the default metric breaking
    ties (see the module docstring)."""
    if evaluator.budget.metric.graded:
        return evaluator, None
    return evaluator.judged_by(evaluator.budget, rank_samples(evaluator.streams is not None)), DEFAULT_BUDGET


def rank_samples(streaming: bool) -> int:
    """How many of the first search samples a ranking on few samples takes: `RANK_SAMPLES`, or a
    recurrent model's first run of its stream."""
    return STREAM_RUN if streaming else RANK_SAMPLES


def _floats(picks: Sequence[Sensitivity]) -> set[str]:
    return {g for p in picks for g in p.groups}


def _greedy(
    evaluator: Evaluator, table: list[Sensitivity], margin: float, deadline: Deadline
) -> tuple[list[Sensitivity], Any, int]:
    """The candidates without weight MACs that gain, together (kept if the metric does not get worse); then
    candidates in rank order, each kept float unless that makes the metric worse, until the budget
    holds; then each given back to int8, last first, if the budget still holds."""
    chosen: list[Sensitivity] = []
    result, evaluations = evaluator.score(set(), margin), 1
    free = [e for e in table if e.macs == 0 and e.gain > 0]  # no weight MACs: float costs no integer compute
    if free and not result.met and not deadline.expired():
        trial = evaluator.score(_floats(free), margin)
        evaluations += 1
        if trial.value >= result.value:
            chosen, result = list(free), trial
    for entry in table:
        if result.met or deadline.expired():
            break
        if set(entry.groups) <= _floats(chosen):
            continue
        trial = evaluator.score(_floats([*chosen, entry]), margin)
        evaluations += 1
        if trial.value >= result.value:  # errors can cancel: a candidate whose float costs the metric stays int8
            chosen.append(entry)
            result = trial
    for entry in reversed(list(chosen)):  # give back what the budget (or, unmet, the metric) can do without
        if deadline.expired():
            break
        trial = evaluator.score(_floats([c for c in chosen if c is not entry]), margin)
        evaluations += 1
        if trial.met if result.met else trial.value >= result.value:
            chosen.remove(entry)
            result = trial
    return _give_back_groups(evaluator, chosen, result, evaluations, margin, deadline)


def _give_back_groups(
    evaluator: Evaluator, chosen: list[Sensitivity], result: Any, evaluations: int, margin: float, deadline: Deadline
) -> tuple[list[Sensitivity], Any, int]:
    """A tensor candidate floats every group around its tensor; once the budget holds, each of
    those groups goes back to int8 (most MACs first) if the budget still holds without it."""
    if not result.met:
        return chosen, result, evaluations
    groups = {g.name: g for g in evaluator.groups}
    for i, entry in enumerate(list(chosen)):
        for name in sorted(entry.groups, key=lambda g: (-groups[g].macs, g)) if len(entry.groups) > 1 else []:
            if deadline.expired() or len(chosen[i].groups) == 1:
                break
            kept = replace(chosen[i], groups=tuple(g for g in chosen[i].groups if g != name))
            trial = evaluator.score(_floats([*chosen[:i], kept, *chosen[i + 1 :]]), margin)
            evaluations += 1
            if trial.met:
                chosen[i] = replace(kept, macs=sum(groups[g].macs for g in kept.groups))
                result = trial
    return chosen, result, evaluations


def _decisions(
    plan: QuantPlan,
    groups: list[QuantGroup],
    table: list[Sensitivity],
    floats: set[str],
    metric: str,
    policy: str,
    cut: bool = False,
) -> dict[str, NodeDecision]:
    rank: dict[str, tuple[int, float]] = {}
    for i, s in enumerate(table):  # a group's rank: its best candidate's
        for g in s.groups:
            rank.setdefault(g, (i + 1, s.gain))
    decisions = dict(plan.nodes)
    for group in groups:
        if not table and not cut:  # nothing was ranked: every group int8 keeps the budget
            for node in group.nodes:
                decisions[node] = NodeDecision(
                    plan.nodes[node].precision, f"{policy}: int8, {metric} met with all int8"
                )
            continue
        if group.name not in rank:  # the time budget ran out before it was measured
            for node in group.nodes:
                decisions[node] = NodeDecision(plan.nodes[node].precision, f"{policy}: int8, not ranked in time")
            continue
        k, gain = rank[group.name]
        if group.name in floats:
            reason = f"{policy}: float, sensitivity rank {k} of {len(table)} ({metric} {gain:+.3g} when float)"
            precision = "float"
        else:
            reason = f"{policy}: int8, sensitivity rank {k} of {len(table)}"
            precision = plan.nodes[group.nodes[0]].precision
        for node in group.nodes:  # a non-finite score would not be valid JSON
            decisions[node] = NodeDecision(precision, reason, float(gain) if math.isfinite(gain) else None)
    return decisions
