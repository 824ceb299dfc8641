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
   whole-model timing sees.

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

from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.passes.quant_groups import QuantGroup, quant_groups
from qcompile.pipeline import run_passes
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.profile import node_times_us
from qcompile.runtime import SessionSource, interleaved_medians_ms, make_session
from qcompile.targets.base import Target

__all__ = ["keep_fast", "group_times", "compiled", "SpeedReport", "TOLERANCE", "MIN_GAP_US"]

TOLERANCE = 0.1
MIN_GAP_US = 5.0
ROUNDS = 3


@dataclass
class SpeedReport:
    """What the speed step measured: per group slower in int8, its times; the whole model's."""

    slower: dict[str, dict[str, float]] = field(default_factory=dict)  # group → {"int8_us", "float_us"}
    kept_float: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # "float", "int8", "with float groups"
    budget_blocked: bool = False  # with the slower groups float, the budget would not hold


def compiled(model: ir.Model, plan: QuantPlan) -> SessionSource:
    """A copy of float `model` quantized with `plan` (Q/DQ inserted, scales folded)."""
    copy = ir.from_proto(ir.to_proto(model))
    run_passes(ir.passes.Sequential(InsertQDQ(plan), FoldScales(plan)), copy)
    return SessionSource.of(copy)


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
    for name, (int8_us, float_us) in sorted(group_times(groups, f, q).items()):
        if float_us > 0 and int8_us > (1 + TOLERANCE) * float_us + MIN_GAP_US:  # 0: no float kernel seen
            report.slower[name] = {"int8_us": round(int8_us, 1), "float_us": round(float_us, 1)}
    decisions = dict(plan.nodes)
    if not report.slower:
        return decisions, report
    if keeps_budget is not None and not keeps_budget(set(report.slower)):
        report.budget_blocked = True
        return decisions, report
    trial = dict(decisions)
    for g in groups:
        if g.name in report.slower:
            times = report.slower[g.name]
            reason = (
                f"selective: float, its int8 kernels are slower here ({times['int8_us']:g} µs vs {times['float_us']:g})"
            )
            for node in g.nodes:
                trial[node] = NodeDecision("float", reason)
    sources = [float_source, int8_source, compiled(model, assign(trial))]
    float_ms, int8_ms, trial_ms = interleaved_medians_ms([make_session(s, threads=1) for s in sources], sample, ROUNDS)
    report.latency_ms = {"float": float_ms, "int8": int8_ms, "with float groups": trial_ms}
    if trial_ms < 0.98 * int8_ms:
        report.kept_float = sorted(report.slower)
        return trial, report
    return decisions, report
