"""The selective policy: per tensor a calibrator, per group int8 or float, under the budget,
with as much of the compute (weight MACs) in the target's integer kernels as it allows.

Calibration keeps one histogram per tensor, so every tensor has four candidate ranges
(`HISTOGRAM_CALIBRATORS`: min/max, percentile, MSE, entropy) at no extra pass over the data.
A calibrator choice costs no integer compute; a float group does.  So, on the search samples:

1. one calibrator for every tensor: each is tried, the best metric wins (ties: the
   `--calibrator` given, then the order above);
2. per tensor: the `REFINED_TENSORS` activations whose own quantization error (SQNR of the
   tensor quantized alone, from the cached float activations) differs most between
   calibrators try each other calibrator end to end; a change is kept when the metric
   improves;
3. only if the budget (with its margin) still fails: groups kept in float, ranked and chosen
   as the hybrid policy does (`qcompile.search.float_search`), on top of those calibrators;
   if that falls short too, the same float search from the given calibrator alone, and the
   better of the two wins (met, then fewer float MACs, then the metric); that second search
   reuses the first one's ranking (the candidates' order), so groups are ranked once;
4. the choice confirmed as compiled, on ORT, on the search samples (`qcompile.confirm`);
5. when latency is measured, the speed step (`qcompile.speed`): the groups whose int8 kernels
   are slower than float on this CPU stay float if the whole model gets faster and the budget
   still holds on the search samples, judged as compiled too (it floated 60 nodes of PP-OCRv5
   rec on the estimate, and held-out lines fell from 96% to 90%).

Every trial is one run of a switchable fake-quant model (`qcompile.passes.sensitivity`) whose
tensors each carry a Q/DQ per distinct candidate spec.  The plan is then assigned again from
the chosen ranges (a scale tied across a Concat's inputs takes the union of its members'
chosen ranges) and verification measures the compiled model on held-out data.  The search is
sequential and its ties are broken by fixed orders: same inputs, same plan.

int16 activations and per-tensor weights are not candidates on ORT CPU: int16 runs there as
DQ → float op → Q (float compute), and per-channel weights are never less accurate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, replace

import onnx_ir as ir

from qcompile.budget import Budget
from qcompile.build_up import unranked
from qcompile.calibrators import HISTOGRAM_CALIBRATORS
from qcompile.confirm import compiled_judge, confirm_compiled
from qcompile.data import Sample
from qcompile.deadline import Deadline
from qcompile.metrics import OutputKind
from qcompile.passes.calibrate import CalibrationResult
from qcompile.passes.quant_groups import quant_groups
from qcompile.passes.sensitivity import own_sqnr_db
from qcompile.passes.switchable import BASE, Evaluator
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from qcompile.search import FloatSearch, SearchReport, float_search, ranked, sampling_error_at
from qcompile.speed import keep_fast
from qcompile.targets.base import Target

__all__ = ["selective_search", "REFINED_TENSORS"]

REFINED_TENSORS = 16


def _variants(plans: Mapping[str, QuantPlan], base: str) -> dict[str, dict[str, QuantSpec]]:
    """Per activation tensor of the `base` plan, the specs the other calibrators give it, where different."""
    found: dict[str, dict[str, QuantSpec]] = {}
    for tensor, spec in plans[base].tensors.items():
        if spec.is_float or spec.per_channel or spec.dtype == "int32":
            continue
        for name, plan in plans.items():
            other = plan.tensors.get(tensor)
            if name != base and other is not None and other != spec:
                found.setdefault(tensor, {})[name] = other
    return found


def _order(base: str) -> list[str]:
    return [base, *(c for c in HISTOGRAM_CALIBRATORS if c != base)]


def selective_search(
    model: ir.Model,
    calib: CalibrationResult,
    decisions: Mapping[str, NodeDecision],
    target: Target,
    samples: Sequence[Sample],
    kinds: dict[str, OutputKind],
    budget: Budget,
    margin: float,
    assign: Callable[[CalibrationResult, Mapping[str, NodeDecision]], QuantPlan],
    pinned: frozenset[str] | set[str] = frozenset(),
    progress: Callable | None = None,
    executor: Executor | None = None,
    deadline: Deadline | None = None,
    speed_sample: Sample | None = None,
    correct_biases: bool = False,
) -> tuple[dict[str, NodeDecision], CalibrationResult, SearchReport]:
    """Node decisions, the calibration with each tensor's chosen range, and the search's report.

    `assign(calib, decisions)` is `assign_specs` with the compile's options.  With a
    `speed_sample`, the speed step (`qcompile.speed`) follows, on that sample, and keeps a group
    float for speed only if the budget still holds on the search samples as compiled.  With `correct_biases`,
    candidates are scored with their biases corrected (`calib`'s channel means)."""
    base, deadline = calib.calibrator, deadline or Deadline()
    plans = {c: assign(_using(calib, c, calib.alternatives[c]), decisions) for c in _order(base)}
    variants = _variants(plans, base)
    groups = quant_groups(model, plans[base], target)
    means = calib.channel_means if correct_biases else None
    where = "the calibration data"
    evaluator = Evaluator(model, plans[base], groups, samples, kinds, budget, where, variants, executor, means)
    uniform = {c: {t: c for t, v in variants.items() if c in v} for c in _order(base)}
    scores = {c: evaluator.choosing(choice).score(set(), margin) for c, choice in uniform.items()}
    best = max(_order(base), key=lambda c: (scores[c].value, -_order(base).index(c)))
    choice, result, evaluations = dict(uniform[best]), scores[best], len(scores)
    if not result.met:
        choice, result, tried = _refine(evaluator, variants, choice, result, margin, deadline)
        evaluations += tried
    chose = evaluator  # the float search on the chosen specs only: one If a tensor, not one per calibrator
    if choice:  # (the same floats as `evaluator.choosing(choice)`)
        plan = _with_choice(plans[base], variants, choice)
        chose = Evaluator(model, plan, groups, samples, kinds, budget, where, None, executor, means, evaluator)
    found = float_search(chose, pinned, margin, progress, deadline)
    evaluations += found.evaluations
    if not found.result.met and choice and not deadline.expired():  # the float search from the given calibrator too
        plain = float_search(evaluator, pinned, margin, progress, deadline, ranking=found)
        evaluations += plain.evaluations
        if _rank(plain) > _rank(found):
            found, choice, best, chose = plain, {}, base, evaluator
    # BASE ("") is the given calibrator; a tensor without a `best` variant has the same spec under both
    chosen = {t: base if choice.get(t) == BASE else choice.get(t, best) for t in variants}
    ranges = {t: calib.alternatives[chosen.get(t, best)][t] for t in calib.ranges}
    final = _using(calib, best, ranges)
    plan_of = lambda f: assign(final, f.decisions(plans[base], "selective"))  # noqa: E731
    compiled = compiled_judge(model, target, samples, kinds, budget, margin, plan_of, means)
    rank = lambda: ranked(chose, found.fixed, progress, deadline)  # noqa: E731
    found, confirmed = confirm_compiled(found, compiled, deadline, rank)
    sampling_error = sampling_error_at(chose, found)  # at the choice as confirmed, as hybrid
    report = found.report(budget, margin, len(samples), "selective")
    report.evaluations = evaluations
    report.calibrator, report.cut, report.trials = best, deadline.cut, evaluator.trials
    report.calibrators = {t: c for t, c in sorted(chosen.items()) if c != best}
    report.sampling_error, report.confirmed = sampling_error, confirmed
    report.streams = evaluator.streams.describe(blocks=True) if evaluator.streams else None
    decided = found.decisions(plans[base], "selective")
    if speed_sample is not None:
        by_name = {g.name: g for g in found.groups}

        def keeps_budget(extra: set[str]) -> bool:  # judged as compiled, as the choice was
            more = [unranked(by_name[g]) for g in sorted(extra) if g in by_name]
            trial = compiled(replace(found, chosen=[*found.chosen, *more]))
            return trial.met or trial.value >= found.result.value

        def plan_for(d: Mapping[str, NodeDecision]) -> QuantPlan:
            return assign(final, d)

        decided, speed = keep_fast(model, plan_for(decided), target, speed_sample, plan_for, pinned, keeps_budget)
        report.speed = asdict(speed)
    return decided, final, report


def _with_choice(
    plan: QuantPlan, variants: Mapping[str, Mapping[str, QuantSpec]], choice: Mapping[str, str]
) -> QuantPlan:
    """`plan` with each tensor of `choice` taking its chosen variant's spec."""
    return replace(plan, tensors={**plan.tensors, **{t: variants[t][v] for t, v in choice.items() if v != BASE}})


def _rank(found: FloatSearch) -> tuple:
    """Met first, then the fewest weight MACs in float, then the metric."""
    return found.result.met, -found.float_macs, found.result.value


def _using(calib: CalibrationResult, name: str, ranges: Mapping[str, tuple[float, float]]) -> CalibrationResult:
    """`calib` read as calibrator `name` would have it, with `ranges`."""
    return replace(calib, calibrator=name, ranges=dict(ranges))


def _refine(
    evaluator: Evaluator,
    variants: dict[str, dict[str, QuantSpec]],
    choice: dict[str, str],
    result,
    margin: float,
    deadline: Deadline,
):
    """Per tensor, the other calibrators end to end, for the tensors whose own error varies most."""
    spread = {}
    for tensor, options in variants.items():
        seen = evaluator.seen(tensor)
        if seen not in evaluator.reference:
            continue
        values = evaluator.reference[seen]
        own = {c: own_sqnr_db(values, spec) for c, spec in options.items()}
        own[BASE] = own_sqnr_db(values, evaluator.plan.tensors[tensor])
        current = own.get(choice.get(tensor, BASE), own[BASE])
        spread[tensor] = max(own.values()) - current
    tensors = sorted((t for t in spread if spread[t] > 0), key=lambda t: (-spread[t], t))[:REFINED_TENSORS]
    tried = 0
    for tensor in tensors:
        for option in [BASE, *variants[tensor]]:
            if option == choice.get(tensor, BASE) or result.met or deadline.expired():
                continue
            trial_choice = {**choice, tensor: option}
            trial = evaluator.choosing(trial_choice).score(set(), margin)
            tried += 1
            if trial.value > result.value:
                choice, result = trial_choice, trial
    return choice, result, tried
