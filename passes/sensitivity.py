"""Sensitivity analysis: what quantizing each group costs the model's outputs (an analysis).

One switchable fake-quant copy of the float graph serves every measurement
(`qcompile.passes.switchable`): a configuration (a set of groups kept float) is one run with
the switches of the tensors no int8 group touches turned off.  The two runs per candidate are
independent of each other and of every other candidate's, so they go to the evaluator's
executor when it has one.  Per group g:

    local SQNR      SQNR of g's output with only g's tensors quantized (its own error)
    only            the budget's metric on the model's outputs with only g quantized
    without         the metric with every group but g quantized
    gain            without − all: what keeping g in float buys end to end (metric units)
    tie_gain        the same gain in a second, graded metric judged on the same runs, when the
                    budget's metric moves in steps (`tie_break`): it orders the candidates
                    whose gains tie (most of them, under a count of right answers)

A tensor stays quantized while any int8 group reads or writes it, so a tensor whose own
quantization is the loss (one channel 1000× the others, under one scale) only shows when
every group around it is float: the tensors whose own quantization error is largest are
candidates too (at most `MAX_TENSOR_CANDIDATES`).

Fake quantization runs in float, so the ranking is the quantization error as the plan
defines it; the chosen plan is then compiled for real and verified on ORT's integer kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from qcompile.budget import Budget
from qcompile.deadline import Deadline
from qcompile.passes.quant_groups import QuantGroup, quantized_tensors_when
from qcompile.passes.switchable import Evaluator
from qcompile.plan import QuantPlan
from qcompile.quant_math import INT_RANGES, dequantize, quantize, sqnr_db

__all__ = ["own_sqnr_db", "Sensitivity", "rank_groups", "MAX_TENSOR_CANDIDATES"]

MAX_TENSOR_CANDIDATES = 12


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
    tie_gain: float | None = None  # the gain in the tie-breaking metric, when there is one

    def to_dict(self) -> dict:
        return asdict(self)


def own_sqnr_db(values: list[np.ndarray], spec) -> float:
    """SQNR of a tensor quantized alone with its spec: its own rounding and clipping error (a scale per
    channel, `qcompile.channel_scales`, along the spec's axis of each sample)."""
    if spec.block_size is not None:
        return math.inf  # blocked weights, rarely the loss
    axis = spec.axis
    arrays = [np.asarray(v, np.float32) for v in values]
    if axis is not None and any(a.ndim <= axis or a.shape[axis] != len(spec.scale) for a in arrays):
        return math.inf
    if axis is None:
        arrays = [np.concatenate([a.ravel() for a in arrays])]
    rounded = [
        dequantize(quantize(a, spec.scale_array(), spec.zero_point_array(), INT_RANGES[spec.dtype], axis=axis),
                   spec.scale_array(), spec.zero_point_array(), axis=axis)
        for a in arrays
    ]  # fmt: skip
    return sqnr_db(np.concatenate([a.ravel() for a in arrays]), np.concatenate([r.ravel() for r in rounded]))


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


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else 0.0


def rank_groups(
    evaluator: Evaluator,
    progress: Callable | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
    deadline: Deadline | None = None,
    tie_break: Budget | None = None,
) -> tuple[float, list[Sensitivity]]:
    """The metric with every group quantized, and each candidate's sensitivity, most sensitive first
    (candidates holding a group named in `exclude` are measured as context only: never listed);
    among equal gains, the larger gain in `tie_break`'s metric first.  Once `deadline` expires,
    the candidates not yet measured are left out."""
    everything = evaluator.run(quantized_tensors_when(evaluator.groups, set()))
    all_quantized = evaluator.judge(everything).value
    tie_base = evaluator.judge(everything, budget=tie_break).value if tie_break else 0.0
    candidates = [c for c in _candidates(evaluator, evaluator.plan) if not exclude.intersection(g.name for g in c[1])]
    configs = []
    for _, around, probe in candidates:  # per candidate: only it quantized, and everything but it
        configs.append(({t for g in around for t in g.tensors}, [evaluator.seen(probe)]))
        configs.append((quantized_tensors_when(evaluator.groups, {g.name for g in around}), []))
    runs = evaluator.run_many(configs)
    table = []
    bar = (progress or (lambda it: it))(candidates)
    best = all_quantized
    for name, around, probe in bar:
        if deadline is not None and deadline.expired():
            break
        alone, everything_else = next(runs), next(runs)
        seen = evaluator.seen(probe)
        kept = evaluator.reference[seen]  # the float activations of the first samples (`PROBE_SAMPLES`)
        ref = np.concatenate([a.ravel() for a in kept])
        local = sqnr_db(ref, np.concatenate([a.ravel() for a in alone[seen][: len(kept)]]))
        without = evaluator.judge(everything_else).value
        if hasattr(bar, "set_postfix") and without > best:  # a tqdm bar: show the best single float group so far
            best = without
            bar.set_postfix(best=f"{best:.4g}", refresh=False)
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
                evaluator.judge(everything_else, budget=tie_break).value - tie_base if tie_break else None,
            )
        )
    table.sort(key=lambda s: (-s.gain, -_finite(s.tie_gain), s.only, s.macs, s.candidate))
    return all_quantized, table
