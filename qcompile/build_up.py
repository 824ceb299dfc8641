"""The float search's second way to a budget: build up from float.

Keeping groups float one at a time from all int8 (the greedy of `qcompile.search`) finds what one
group, or a few, break.  Where several groups each break the budget on their own, no one group
floated mends it, and the greedy ends unmet: silero VAD run as a stream, where quantizing alone
the Gather that reads its state, or the Add before its LSTM, or one Conv, each leaves the speech
probability 0.8 from float's.  Then build up instead, from every candidate group in float:

    the groups with weight MACs first, then those without (data movement, Add, Mul: int8 there
    buys no integer compute, and it must not spend the budget a Conv or Gemm could use);
    within each, by `only` (the metric with only that group quantized), least harmful first;
    among equals, the most weight MACs first;
    quantize each in turn, kept int8 if the budget still holds with the margin, else float again.

Silero VAD streamed: by harm alone, its state's Gathers, Unsqueezes, Adds and gates went int8
first and every Conv and Gemm after them broke the budget (no weight MAC in int8); weight groups
first, the input Gemm of its LSTM cell stays int8 (12% of the weight MACs, Δp 0.012 held out).

One evaluation per group.  Each group is judged with the groups before it already int8, so an
error that only a combination causes still sends the last of them back to float.
"""

from __future__ import annotations

import math
from typing import Any

from qcompile.deadline import Deadline
from qcompile.passes.quant_groups import QuantGroup
from qcompile.passes.sensitivity import Sensitivity
from qcompile.passes.switchable import Evaluator

__all__ = ["build_up", "unranked"]


def build_up(
    evaluator: Evaluator, table: list[Sensitivity], fixed: set[str], margin: float, deadline: Deadline
) -> tuple[list[Sensitivity], Any, int]:
    """The groups left float (as table entries) when the free groups are quantized one at a time
    from float, the result with them, and the evaluations made.  Unmet with every free group
    float (the pinned ones break it): every free group float, as measured."""
    singles = {s.groups[0]: s for s in table if len(s.groups) == 1}
    free = [g for g in evaluator.groups if g.name not in fixed]

    def harm(group: QuantGroup) -> tuple:
        only = singles[group.name].only if group.name in singles else -math.inf
        return (group.macs == 0, -(only if math.isfinite(only) else -math.inf), -group.macs, group.name)

    floats = {g.name for g in free}
    result, evaluations = evaluator.score(floats, margin), 1
    for group in sorted(free, key=harm) if result.met else []:
        if deadline.expired():
            break
        trial = evaluator.score(floats - {group.name}, margin)
        evaluations += 1
        if trial.met:
            floats.discard(group.name)
            result = trial
    kept = [singles.get(g.name) or unranked(g) for g in free if g.name in floats]
    return kept, result, evaluations


def unranked(group: QuantGroup) -> Sensitivity:
    """A table entry for a group the ranking did not measure."""
    nan = math.nan
    return Sensitivity(group.name, (group.name,), group.ops, group.macs, nan, nan, nan, 0.0)
