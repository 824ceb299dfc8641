"""16-bit activations as the alternative to float, after a precision search (hybrid, selective).

On a target with 16-bit kernels (`Target.a16_dtype`: TFLite's 16x8), float is the costly way out
for a sensitive op: it leaves the integer graph (a float island; on TFLite Micro and NPUs, no
kernel at all).  So the nodes the search kept float, where the target's rule runs the op with
16-bit activations, are tried as "int16" together: the plan is assigned again, the QDQ model
built on a copy and run on the search samples, and the promotion is kept when the budget still
holds with the search's margin.  One trial: all such nodes or none; the card says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget, stacked
from qcompile.data import LABELS_KEY, Sample
from qcompile.metrics import OutputKind
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.pipeline import run_passes
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.runtime import SessionSource, make_session, run_session
from qcompile.targets.base import Target

__all__ = ["promote_to_a16", "PROMOTED"]

PROMOTED = "kept float by the search; 16-bit activations meet the budget there"


def _outputs(model: ir.Model, samples: Sequence[Sample]) -> dict[str, list]:
    session = make_session(SessionSource.of(model))
    names = [o.name for o in session.get_outputs()]
    out: dict[str, list] = {n: [] for n in names}
    for sample in samples:
        for name, value in run_session(session, sample, names).items():
            out[name].append(value)
    return out


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
) -> tuple[dict[str, NodeDecision], dict]:
    """The decisions with the search's float nodes at int16 if the budget holds that way; a report."""
    if target.a16_dtype is None or not samples:
        return dict(decisions), {}
    nodes = {n.name: n for n in model.graph.all_nodes()}
    eligible = [
        name
        for name, d in decisions.items()
        if d.precision == "float" and name not in pinned and (rule := target.rule(nodes[name])) is not None and rule.a16
    ]
    if not eligible:
        return dict(decisions), {}
    trial = {**decisions, **{n: NodeDecision("int16", PROMOTED) for n in eligible}}
    candidate = ir.from_proto(ir.to_proto(model))
    plan = assign(trial)
    run_passes(ir.passes.Sequential(InsertQDQ(plan), FoldScales(plan)), candidate)
    ref, got = _outputs(model, samples), _outputs(candidate, samples)
    floats = [n for n in ref if ref[n] and np.asarray(ref[n][0]).dtype.kind == "f"]
    labels = [s[LABELS_KEY] for s in samples if LABELS_KEY in s]
    result = budget.evaluate(
        {n: stacked(ref[n]) for n in floats},
        {n: stacked(got[n]) for n in floats},
        kinds,
        np.concatenate([np.ravel(x) for x in labels]) if len(labels) == len(samples) else None,
        margin,
        where="the search samples",
    )
    report = {"nodes": eligible, "value": result.value, "kept": result.met}
    return (trial if result.met else dict(decisions)), report
