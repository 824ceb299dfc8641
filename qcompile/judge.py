"""A candidate plan judged on the search samples: built as a QDQ model on a copy of the float graph,
run, and its outputs compared with the float model's under the budget.  Shared by the searches that
try whole plans after the ranking (`promote16`, `target_search`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget, BudgetResult, jackknife_error, stacked, stacked_labels
from qcompile.data import Sample
from qcompile.metrics import OutputKind
from qcompile.passes.absorb_channel_scales import AbsorbChannelScales
from qcompile.passes.correct_bias import BiasCorrection, bias_shifts, own_bias_values
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.pipeline import run_passes
from qcompile.plan import QuantPlan
from qcompile.runtime import SessionSource
from qcompile.streams import Streams
from qcompile.verify import run_outputs

__all__ = ["SampleJudge", "built"]


def built(
    model: ir.Model, plan: QuantPlan, *after: ir.passes.PassBase, means: Mapping[str, np.ndarray] | None = None
) -> ir.Model:
    """A copy of the float `model` with `plan`'s Q/DQ inserted and scales folded (then `after`);
    with the calibration's channel `means`, its biases corrected for `plan` first, as the compiled
    model's will be (`qcompile.passes.correct_bias`)."""
    candidate = ir.from_proto(ir.to_proto(model))
    if means:
        run_passes(BiasCorrection(own_bias_values(candidate), bias_shifts(candidate, plan, means)), candidate)
    # a scale per channel on an activation (qcompile.channel_scales) as the target's lowering writes it
    run_passes(ir.passes.Sequential(InsertQDQ(plan), FoldScales(plan), AbsorbChannelScales(), *after), candidate)
    return candidate


class SampleJudge:
    """The float model's outputs on the search samples, computed once; `evaluate` reads the budget
    on a candidate's outputs there (float outputs only, with the search's margin)."""

    def __init__(
        self, model: ir.Model, samples: Sequence[Sample], kinds: Mapping[str, OutputKind], budget: Budget, margin: float
    ):
        self.samples, self.kinds, self.budget, self.margin = samples, kinds, budget, margin
        self.ref = run_outputs(SessionSource.of(model), samples)
        self.streams = Streams.of(samples, self.ref, kinds, "the search samples")
        self.floats = [n for n in self.ref if self.ref[n] and np.asarray(self.ref[n][0]).dtype.kind == "f"]
        self.labels = stacked_labels(samples)

    def evaluate(self, runner: Any, reserve: bool = False) -> BudgetResult:
        """The budget on `runner`'s outputs (anything `run_outputs` takes) over the search samples;
        with `reserve`, a metric that may move in steps keeps at least its sampling error in reserve
        where it meets the budget, as the searches' own scores do (`Evaluator.score`)."""
        got = run_outputs(runner, self.samples, streams=self.streams)
        result = self._judged(got, self.margin)
        if reserve and result.met and not self.budget.metric.graded:
            ref, outs = {n: self.ref[n] for n in self.floats}, {n: got[n] for n in self.floats}
            blocks = self.streams.blocks() if self.streams is not None else None
            error = jackknife_error(self.budget, ref, outs, self.kinds, self.labels, blocks)
            if error > self.margin:
                result = self._judged(got, error)
        return result

    def _judged(self, got: dict[str, list[np.ndarray]], margin: float) -> BudgetResult:
        return self.budget.evaluate(
            {n: stacked(self.ref[n]) for n in self.floats},
            {n: stacked(got[n]) for n in self.floats},
            self.kinds,
            self.labels,
            margin,
            where="the search samples",
        )
