"""Building up from float (`qcompile.build_up`): the rule, on given scores (which groups break the
budget), and the silero-like case it exists for, where each of several groups breaks it alone."""

import itertools
import math

from qcompile.budget import BudgetResult
from qcompile.build_up import build_up
from qcompile.deadline import Deadline
from qcompile.passes.quant_groups import QuantGroup
from qcompile.passes.sensitivity import Sensitivity


class GivenScores:
    """Scores a configuration as a model would whose budget breaks when any of `breakers` is int8,
    or when `pair` is int8 together; records the order groups were tried in."""

    def __init__(self, names: list[str], macs: dict[str, int], breakers: set[str], pair: set[str]):
        self.groups = [QuantGroup(n, (n,), ("Conv",), (n,), macs[n], n) for n in names]
        self.breakers, self.pair, self.tried = breakers, pair, []

    def score(self, float_groups: set[str], margin: float = 0.0) -> BudgetResult:
        int8 = {g.name for g in self.groups} - float_groups
        self.tried.append(sorted(int8))
        broken = bool(int8 & self.breakers) or bool(self.pair) and self.pair <= int8
        return BudgetResult(0.5 if broken else 0.99, None, not broken)


def _entry(name: str, only: float, macs: int) -> Sensitivity:
    return Sensitivity(name, (name,), ("Conv",), macs, 30.0, only, 0.5, 0.0)


def test_each_breaker_stays_float_and_every_other_group_is_int8():
    macs = {"a": 10, "b": 40, "c": 20, "d": 30, "e": 5}
    evaluator = GivenScores(list(macs), macs, breakers={"b", "d"}, pair=set())
    table = [_entry("a", 0.95, 10), _entry("b", 0.2, 40), _entry("c", 0.95, 20), _entry("d", 0.3, 30)]
    kept, result, evaluations = build_up(evaluator, table, set(), 0.0, Deadline())
    assert sorted(k.candidate for k in kept) == ["b", "d"] and result.met
    assert evaluations == 1 + 5  # all float, then each group once


def test_the_least_harmful_alone_go_first_the_most_macs_first_among_equals_unranked_last():
    macs = {"a": 10, "b": 40, "c": 20, "d": 30, "e": 5}
    evaluator = GivenScores(list(macs), macs, breakers=set(), pair=set())
    table = [_entry("a", 0.95, 10), _entry("b", 0.2, 40), _entry("c", 0.95, 20), _entry("d", 0.3, 30)]
    kept, result, _ = build_up(evaluator, table, set(), 0.0, Deadline())
    assert not kept and result.met
    # every trial kept: each tries one group more than the one before
    order = [(set(t) - set(before)).pop() for before, t in itertools.pairwise(evaluator.tried)]
    assert order == ["c", "a", "d", "b", "e"]


def test_a_group_the_ranking_did_not_reach_is_reported_without_figures():
    macs = {"a": 10, "b": 20}
    evaluator = GivenScores(list(macs), macs, breakers={"b"}, pair=set())
    kept, _, _ = build_up(evaluator, [_entry("a", 0.9, 10)], set(), 0.0, Deadline())
    assert [k.candidate for k in kept] == ["b"] and math.isnan(kept[0].only) and kept[0].macs == 20


def test_a_pair_that_breaks_it_together_sends_the_later_one_back_to_float():
    macs = {"a": 10, "b": 20, "c": 30}
    evaluator = GivenScores(list(macs), macs, breakers=set(), pair={"a", "c"})
    table = [_entry("a", 0.99, 10), _entry("b", 0.98, 20), _entry("c", 0.97, 30)]
    kept, result, _ = build_up(evaluator, table, set(), 0.0, Deadline())
    assert [k.candidate for k in kept] == ["c"] and result.met


def test_pinned_groups_are_never_touched_and_an_unmet_float_start_gives_up():
    macs = {"a": 10, "b": 20}
    evaluator = GivenScores(list(macs), macs, breakers={"a"}, pair=set())
    kept, result, evaluations = build_up(evaluator, [_entry("b", 0.9, 20)], {"a"}, 0.0, Deadline())
    assert not result.met and evaluations == 1 and [k.candidate for k in kept] == ["b"]


def test_groups_without_weight_macs_wait_for_every_weight_group():
    """A data-movement group, however harmless alone, is tried after the weight groups: with it int8
    first, the pair it breaks would send the Conv back to float and no weight MAC would be int8."""
    macs = {"move": 0, "conv": 30, "gemm": 10}
    evaluator = GivenScores(list(macs), macs, breakers=set(), pair={"move", "conv"})
    table = [_entry("move", 0.999, 0), _entry("conv", 0.97, 30), _entry("gemm", 0.98, 10)]
    kept, result, _ = build_up(evaluator, table, set(), 0.0, Deadline())
    assert [k.candidate for k in kept] == ["move"] and result.met
    order = [(set(t) - set(before)).pop() for before, t in itertools.pairwise(evaluator.tried)]
    assert order == ["gemm", "conv", "move"]
