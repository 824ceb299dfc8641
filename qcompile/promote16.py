"""16-bit activations as the alternative to float, after a precision search (hybrid, selective).

On a target with 16-bit kernels (`Target.a16_dtype`: TFLite's 16x8), float is the costly way out
for a sensitive op: it leaves the integer graph (a float island; on TFLite Micro and NPUs, no
kernel at all).  So the nodes the search kept float, where the target's rule runs the op with
16-bit activations, are tried as "int16" together: the plan is assigned again, the QDQ model
built on a copy and run on the search samples, and the promotion is kept when the budget still
holds with the search's margin.  If all together do not hold, the first `MAX_SINGLE_TRIALS` are
tried one at a time, each kept if the budget still holds; the card lists the promoted nodes.

On a target where float is no way out at all (an NPU) the search is `target_search.npu_search`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget
from qcompile.data import Sample
from qcompile.judge import SampleJudge, built
from qcompile.metrics import OutputKind
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.runtime import SessionSource, unfused_stand_in
from qcompile.targets.base import Target

__all__ = ["promote_to_a16", "PROMOTED"]

PROMOTED = "kept float by the search; 16-bit activations meet the budget there"
MAX_SINGLE_TRIALS = 8  # after all-at-once fails: nodes tried one by one (each trial builds and runs a model)


def promote_to_a16(
    model: ir.Model,
    target: Target,
    decisions: Mapping[str, NodeDecision],
    assign: Callable[[Mapping[str, NodeDecision]], QuantPlan],
    samples: Sequence[Sample],
    kinds: Mapping[str, OutputKind],
    budget: Budget,
    margin: float,
    pinned: set[str],
    means: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, NodeDecision], dict]:
    """The decisions with the search's float nodes at int16 if the budget holds that way; a report."""
    if target.a16_dtype is None or not samples:
        return dict(decisions), {}
    nodes = {n.name: n for n in model.graph.all_nodes()}
    eligible = [
        name
        for name, d in decisions.items()
        if d.precision == "float"
        and name not in pinned
        and (rule := target.rule(nodes[name])) is not None
        and rule.runs_a16(nodes[name])
    ]
    if not eligible:
        return dict(decisions), {}
    judge = SampleJudge(model, samples, kinds, budget, margin)

    def holds(names: list[str]) -> tuple[bool, float]:
        trial = {**decisions, **{n: NodeDecision("int16", PROMOTED) for n in names}}
        candidate = built(model, assign(trial), means=means)
        result = judge.evaluate(SessionSource.of(candidate, unfused_qdq=unfused_stand_in(target.ort_is_runtime)))
        return result.met, result.value

    met, value = holds(eligible)
    kept = list(eligible) if met else []
    if not met and len(eligible) > 1:  # one at a time, in graph order, each kept if the budget still holds
        for name in eligible[:MAX_SINGLE_TRIALS]:
            ok, trial_value = holds([*kept, name])
            if ok:
                kept.append(name)
                value = trial_value
    report = {"nodes": eligible, "promoted": kept, "value": value, "kept": bool(kept)}
    return {**decisions, **{n: NodeDecision("int16", PROMOTED) for n in kept}}, report
