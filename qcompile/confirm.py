"""The search's choice confirmed on the model as it will be compiled.

The searches score candidates on a switchable fake-quant copy of the float graph, on the naive
plan's scales.  The compiled model is not quite that: its plan is assigned again with the chosen
precisions (a scale tied across a Concat's inputs widens or narrows once a neighbour is float),
its scales are folded and its biases corrected, and ONNX Runtime runs fused integer kernels.
PP-OCRv5 rec under hybrid: the estimate read 31 of its 32 search lines as float does, the compiled
model 29, held-out lines 84%.  So the chosen plan is built as `compile` will build it and judged on
ORT on the same search samples, with the same margin (and sampling-error reserve):

    compiled meets the budget      → kept; the card reports the compiled value
    estimate met, compiled missed  → the ranking's next candidates not yet float go float, one
                                     at a time, each built and judged again; a candidate is kept
                                     if the compiled value does not get worse; stop once it meets
                                     the budget, after `CONFIRM_STEPS` builds, or at the deadline
                                     (where all int8 met the estimate, nothing was ranked: the
                                     candidates are ranked first)
    estimate missed too            → kept as is; the compiled value is what the card reports

so that the plan's figure on the search samples is the compiled model's, not the estimate's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget, BudgetResult
from qcompile.data import Sample
from qcompile.deadline import Deadline
from qcompile.judge import SampleJudge, built
from qcompile.metrics import OutputKind
from qcompile.passes.sensitivity import Sensitivity
from qcompile.plan import QuantPlan
from qcompile.runtime import SessionSource, unfused_stand_in
from qcompile.targets import Target

if TYPE_CHECKING:
    from qcompile.search import FloatSearch

__all__ = ["confirm_compiled", "compiled_judge", "CONFIRM_STEPS"]

CONFIRM_STEPS = 8  # each builds a model and runs it on the search samples


def confirm_compiled(
    found: FloatSearch,
    compiled: Callable[[FloatSearch], BudgetResult],
    deadline: Deadline,
    rank: Callable[[], tuple[list[Sensitivity], int, dict | None]] | None = None,
) -> tuple[FloatSearch, dict]:
    """`found` with the compiled model's result and any candidates floated to meet the budget
    there (`rank` ranks them when the search had not: all int8 met its estimate), and a record:
    {"estimate", "values" (every build judged), "floated", "value", "met"; "ranked" when it ranked}."""
    result = compiled(found)
    record: dict = {"estimate": found.result.value, "values": [result.value], "floated": []}
    if found.result.met and not result.met and not found.table and rank is not None and not deadline.expired():
        table, evaluations, ranked_by = rank()  # all int8 met the estimate: nothing was ranked yet
        found = replace(found, table=table, evaluations=found.evaluations + evaluations, ranked_by=ranked_by)
        record["ranked"] = True
    chosen = list(found.chosen)
    if found.result.met and not result.met:
        floats = {g for c in chosen for g in c.groups}
        for entry in found.table:
            if len(record["values"]) > CONFIRM_STEPS or deadline.expired() or result.met:
                break
            if set(entry.groups) <= floats:
                continue
            trial = compiled(replace(found, chosen=[*chosen, entry]))
            record["values"].append(trial.value)
            if trial.value >= result.value:
                chosen.append(entry)
                floats |= set(entry.groups)
                record["floated"].append(entry.candidate)
                result = trial
    record["value"], record["met"] = result.value, result.met
    return replace(found, chosen=chosen, result=result), record


def compiled_judge(
    model: ir.Model,
    target: Target,
    samples: Sequence[Sample],
    kinds: Mapping[str, OutputKind],
    budget: Budget,
    margin: float,
    plan_of: Callable[[FloatSearch], QuantPlan],
    means: Mapping[str, np.ndarray] | None = None,
) -> Callable[[FloatSearch], BudgetResult]:
    """A search's choice → the budget on `samples` of the QDQ model `plan_of(choice)` builds (biases
    corrected with the calibration's channel `means`), run on ORT as verification will run it."""
    judge = SampleJudge(model, samples, kinds, budget, margin)

    def compiled(found: FloatSearch) -> BudgetResult:
        candidate = built(model, plan_of(found), means=means)
        source = SessionSource.of(candidate, unfused_qdq=unfused_stand_in(target.ort_is_runtime))
        return judge.evaluate(source, reserve=True)

    return compiled
