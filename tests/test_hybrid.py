"""The hybrid policy end to end: the planted sensitive tensor is kept float, the budget holds on
held-out data, pins stay pinned, the card and plan say why, and the result is deterministic."""

from itertools import pairwise

import numpy as np
import pytest

import qcompile
from qcompile.budget import BudgetResult
from qcompile.card import render_markdown
from qcompile.deadline import Deadline
from qcompile.errors import QCompileError
from qcompile.passes.sensitivity import Sensitivity
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.search import RANK_SAMPLES, _greedy
from tests.helpers import SAMPLES
from tests.passes.test_sensitivity import planted_chain


def _data(rng, n):
    return [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(n)]


def test_hybrid_keeps_the_planted_tensor_float_and_meets_the_budget(rng):
    calib, held = _data(rng, 24), _data(rng, 12)
    naive = qcompile.compile(
        planted_chain(rng), calibration=calib, evaluation=held, metric="sqnr", floor=30, measure_latency=False
    )
    assert not naive.card["budget"]["met"]
    result = qcompile.compile(
        planted_chain(np.random.default_rng(1234)),
        calibration=calib,
        evaluation=held,
        policy="hybrid",
        metric="sqnr",
        floor=30,
        measure_latency=False,
    )
    assert result.card["budget"]["met"], result.card["budget"]
    assert {"fc_b", "fc_c"} <= set(result.card["search"]["float_groups"])
    decision = result.plan.nodes["fc_b"]
    assert decision.precision == "float" and decision.reason.startswith("hybrid: float, sensitivity rank 1")
    assert result.plan.meta["search"]["met"] and "## Precision search (hybrid)" in render_markdown(result.card)


def test_pins_stay_pinned_and_the_result_is_deterministic(rng):
    def compile_once():
        pins = QuantPlan(nodes={"fc_a": NodeDecision("float")})
        return qcompile.compile(
            planted_chain(np.random.default_rng(7)),
            calibration=_data(np.random.default_rng(3), 16),
            policy="hybrid",
            metric="sqnr",
            floor=30,
            plan=pins,
            measure_latency=False,
        )

    first, second = compile_once(), compile_once()
    assert first.plan.nodes["fc_a"].reason == "pinned by the user plan"
    assert "fc_a" not in {s["candidate"] for s in first.card["search"]["table"]}
    assert first.plan.to_json() == second.plan.to_json()


@pytest.mark.slow
def test_hybrid_on_the_sample_keeps_its_budget_on_held_out_digits():
    result = qcompile.compile(
        SAMPLES / "digits_cnn.onnx",
        calibration=SAMPLES / "digits_calib.npz",
        evaluation=SAMPLES / "digits_test.npz",
        policy="hybrid",
        floor=36,
        measure_latency=False,
    )
    search = result.card["search"]
    assert result.card["budget"]["met"] and search["chosen"] > search["all_int8"] and search["float_groups"]
    assert result.card["fidelity"]["quant_accuracy"] >= result.card["fidelity"]["float_accuracy"] - 0.005


def test_a_task_budget_needs_labels_in_the_calibration_data(rng):
    with pytest.raises(QCompileError, match="metric 'accuracy' needs labels in the calibration data"):
        qcompile.compile(
            planted_chain(rng), calibration=_data(rng, 8), policy="hybrid", max_drop=0.01, measure_latency=False
        )


def test_a_budget_that_holds_all_int8_needs_no_ranking(rng):
    result = qcompile.compile(
        planted_chain(rng), calibration=_data(rng, 16), policy="hybrid", metric="sqnr", floor=0, measure_latency=False
    )
    search = result.card["search"]
    assert search["met"] and search["evaluations"] == 1 and search["table"] == [] and search["float_groups"] == []
    assert {d.reason for d in result.plan.nodes.values() if d.precision == "int8"} == {
        "hybrid: int8, sqnr met with all int8"
    }
    assert "Nothing ranked: the budget holds with every group in int8." in render_markdown(result.card)


def test_a_given_ranking_is_reused_instead_of_ranking_again(rng):
    from qcompile.budget import Budget, parse_metric
    from qcompile.metrics import OutputKind
    from qcompile.passes.quant_groups import quant_groups
    from qcompile.passes.switchable import Evaluator
    from qcompile.search import float_search
    from qcompile.targets import get_target
    from tests.support.quant_models import planned

    model = planted_chain(rng)
    samples = _data(rng, 16)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    evaluator = Evaluator(model, plan, groups, samples, {"y": OutputKind()}, Budget(parse_metric("sqnr"), floor=30))
    first = float_search(evaluator, set(), 1.0)
    again = float_search(evaluator, set(), 1.0, ranking=first)
    assert first.result.met and again.result.met
    assert {g for c in again.chosen for g in c.groups} == {g for c in first.chosen for g in c.groups}
    assert again.evaluations == first.evaluations - 2 * len(first.table) - 1  # no ranking runs of its own


def test_a_metric_that_may_move_in_steps_ranks_on_fewer_samples_with_the_default_metric_breaking_ties(rng):
    def within_30_db(ref, got):  # 1 when the output keeps 30 dB, else 0: flat under most single changes
        noise = np.sum((ref["y"] - got["y"]) ** 2)
        return float(10 * np.log10(np.sum(ref["y"] ** 2) / max(noise, 1e-30)) >= 30)

    calib, held = _data(rng, 32), _data(rng, 12)
    options = {
        "policy": "hybrid",
        "metric": within_30_db,
        "floor": 0.99,
        "search_samples": 16,
        "measure_latency": False,
    }
    result = qcompile.compile(planted_chain(np.random.default_rng(1234)), "ort-cpu", calib, held, **options)
    search = result.card["search"]
    assert search["met"] and result.card["budget"]["met"] and search["chosen"] == 1.0 and search["all_int8"] == 0.0
    assert search["ranked_by"] == {"samples": RANK_SAMPLES, "tie_break": "fidelity"} and search["search_samples"] == 16
    table = search["table"]
    assert all(s["gain"] in (0.0, 1.0) and s["tie_gain"] is not None for s in table)
    for a, b in pairwise(table):  # the budget's gain first, the default metric's among equal gains
        assert (a["gain"], a["tie_gain"]) >= (b["gain"], b["tie_gain"])
    assert any(s["tie_gain"] > 10 for s in table) and result.plan.nodes["fc_b"].precision == "float"
    assert "among equal gains, the larger gain in fidelity first" in render_markdown(result.card)


def test_the_number_of_search_samples_is_the_users_to_choose(rng):
    data = _data(rng, 32)
    options = {"policy": "hybrid", "metric": "sqnr", "floor": 30, "measure_latency": False, "search_samples": 12}
    result = qcompile.compile(planted_chain(np.random.default_rng(1234)), "ort-cpu", data, _data(rng, 8), **options)
    assert result.card["search"]["search_samples"] == 12 and result.card["calibration_samples"] == 20
    with pytest.raises(QCompileError, match="search samples only apply to --policy hybrid or selective, not naive"):
        qcompile.compile(planted_chain(rng), calibration=data, search_samples=12, measure_latency=False)
    with pytest.raises(QCompileError, match="the search needs at least 1 sample, got 0"):
        qcompile.compile(planted_chain(rng), calibration=data, policy="hybrid", search_samples=0)


class _ResidualStream:
    """A search's scores as a residual stream gives them: each of two Adds (no weight MACs) gains
    1 dB alone and 6 together; the MatMul gains 8 dB at 1,000 MACs.  The budget is 15 dB."""

    groups: list = []

    def score(self, floats: set[str], margin: float = 0.0) -> BudgetResult:
        value = 10.0 + (6.0 if {"add1", "add2"} <= floats else 1.0 if floats & {"add1", "add2"} else 0.0)
        value += 8.0 if "mm" in floats else 0.0
        return BudgetResult(value, None, value >= 15.0 + margin)


def _candidate(name: str, macs: int, gain: float) -> Sensitivity:
    return Sensitivity(name, (name,), ("Add" if macs == 0 else "MatMul",), macs, 30.0, 10.0, 10.0 + gain, gain)


def test_candidates_without_weight_macs_go_float_together_before_any_matmul():
    table = [_candidate("mm", 1000, 8.0), _candidate("add1", 0, 1.0), _candidate("add2", 0, 1.0)]
    chosen, result, _ = _greedy(_ResidualStream(), table, 0.0, Deadline())  # type: ignore[arg-type]
    assert {g for c in chosen for g in c.groups} == {"add1", "add2"} and result.met, (chosen, result)
