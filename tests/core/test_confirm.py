"""The search's choice confirmed as compiled (`qcompile.confirm`): the rule on given compiled
results, and end to end against an independent run of the compiled model on the search samples."""

from dataclasses import replace

import numpy as np
import pytest

import qcompile
from qcompile.budget import BudgetResult
from qcompile.card import render_markdown
from qcompile.confirm import CONFIRM_STEPS, confirm_compiled
from qcompile.deadline import Deadline
from qcompile.passes.quant_groups import QuantGroup
from qcompile.passes.sensitivity import Sensitivity
from qcompile.runtime import make_session, run_session
from qcompile.search import FloatSearch
from qcompile.search_split import SearchSplit
from tests.passes.test_sensitivity import planted_chain


def _found(names: list[str], chosen: list[str], met: bool) -> FloatSearch:
    groups = [QuantGroup(n, (n,), ("Conv",), (n,), 10, n) for n in names]
    table = [Sensitivity(n, (n,), ("Conv",), 10, 30.0, 0.9, 0.9, 1.0) for n in names]
    picked = [t for t in table if t.candidate in chosen]
    return FloatSearch(groups, set(), 0.5, table, picked, BudgetResult(0.99, None, met), 5, "sqnr")


def _compiled_needing(needed: set[str], worse: set[str] = frozenset()):
    """Compiled results of a model that meets the budget once `needed` are float; floating a group of
    `worse` makes it worse."""
    calls = []

    def compiled(found: FloatSearch) -> BudgetResult:
        floats = {g for c in found.chosen for g in c.groups}
        calls.append(floats)
        value = (90 + 5 * len(floats & needed) - 10 * len(floats & worse)) / 100
        return BudgetResult(value, None, needed <= floats)

    return compiled, calls


def test_a_choice_the_compiled_model_meets_is_kept_with_its_compiled_value():
    found = _found(["a", "b", "c"], ["a"], met=True)
    compiled, calls = _compiled_needing({"a"})
    kept, record = confirm_compiled(found, compiled, Deadline())
    assert len(calls) == 1 and kept.chosen == found.chosen and kept.result.met
    assert record == {"estimate": 0.99, "values": [0.95], "floated": [], "value": 0.95, "met": True}


def test_where_the_compiled_model_misses_the_next_candidates_go_float_until_it_meets():
    found = _found(["a", "b", "c", "d"], ["a"], met=True)
    compiled, calls = _compiled_needing({"a", "c"}, worse={"b"})
    kept, record = confirm_compiled(found, compiled, Deadline())
    assert [c.candidate for c in kept.chosen] == ["a", "c"] and kept.result.met
    assert record["floated"] == ["c"] and len(calls) == 3  # b made it worse and went back; d never tried


def test_where_all_int8_met_the_estimate_the_candidates_are_ranked_first():
    ranked = _found(["a", "b"], [], met=True)
    unranked = replace(ranked, table=[])
    compiled, calls = _compiled_needing({"b"})
    kept, record = confirm_compiled(unranked, compiled, Deadline(), rank=lambda: (ranked.table[::-1], 6, None))
    assert record["ranked"] and record["floated"] == ["b"] and kept.result.met
    assert kept.table == ranked.table[::-1] and kept.evaluations == unranked.evaluations + 6
    assert len(calls) == 2  # b ranked first: one more build met it


def test_an_estimate_that_missed_is_only_reported_and_the_builds_are_bounded():
    missed = _found(["a", "b"], [], met=False)
    compiled, calls = _compiled_needing({"a"})
    kept, record = confirm_compiled(missed, compiled, Deadline())
    assert len(calls) == 1 and not kept.result.met and kept.result.value == 0.9 and not record["met"]
    many = [f"g{i}" for i in range(20)]
    compiled, calls = _compiled_needing(set(many))
    kept, record = confirm_compiled(_found(many, [], met=True), compiled, Deadline())
    assert len(calls) == 1 + CONFIRM_STEPS and not record["met"]
    expired = Deadline(0.0)
    compiled, calls = _compiled_needing({"a", "b"})
    confirm_compiled(_found(["a", "b"], [], met=True), compiled, expired)
    assert len(calls) == 1  # judged once, as compiled, even when the time budget is spent


def _data(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("policy", ["hybrid", "selective"])
def test_the_card_reports_the_compiled_models_value_on_the_search_samples(policy):
    calib, held = _data(3, 24), _data(4, 12)
    model = planted_chain(np.random.default_rng(1234))
    result = qcompile.compile(
        model, calibration=calib, evaluation=held, policy=policy, metric="sqnr", floor=30, measure_latency=False
    )
    confirmed = result.card["search"]["confirmed"]
    assert confirmed["met"] and result.card["search"]["chosen"] == confirmed["value"]
    # independently: the written model and the float one on ORT, on the samples the search set aside
    search = SearchSplit(iter(calib), 8)
    list(search)
    floats, quant = make_session(planted_chain(np.random.default_rng(1234))), make_session(result.model)
    ref = np.concatenate([run_session(floats, s)["y"] for s in search.samples])
    got = np.concatenate([run_session(quant, s)["y"] for s in search.samples])
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert confirmed["value"] == pytest.approx(sqnr, abs=0.01)
    assert "built as compiled and run on ONNX Runtime on the same search samples" in render_markdown(result.card)
