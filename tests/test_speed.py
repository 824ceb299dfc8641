"""The speed step of the selective policy: per-group times from ORT's profiler, groups slower in
int8 kept float only when the whole model gets faster, every choice explained."""

import pytest

import qcompile
from qcompile.passes.quant_groups import QuantGroup
from qcompile.speed import MIN_GAP_US, NOISE, TOLERANCE, group_times
from tests.helpers import SAMPLES


def test_a_groups_int8_time_counts_its_kernels_and_the_qdq_of_its_tensors():
    group = QuantGroup("conv", ("conv", "relu"), ("Conv", "Relu"), ("x", "w", "r"), 100, "r")
    int8 = {"conv": 30.0, "x_Q": 4.0, "r_DQ": 2.0, "other": 99.0}
    floats = {"conv": 20.0, "relu": 1.0, "other": 1.0}
    assert group_times([group], floats, int8) == {"conv": (36.0, 21.0)}


@pytest.mark.slow
def test_selective_reports_and_explains_what_it_kept_float_for_speed():
    result = qcompile.compile(
        SAMPLES / "digits_cnn.onnx",
        calibration=SAMPLES / "digits_calib.npz",
        evaluation=SAMPLES / "digits_test.npz",
        policy="selective",
    )
    speed = result.card["search"]["speed"]
    assert set(speed["latency_ms"]) <= {"float", "int8", "with float groups"}
    for times in speed["slower"].values():  # what the rule says, on what was measured
        assert times["int8_us"] > (1 + TOLERANCE) * times["float_us"] + MIN_GAP_US - 0.1  # rounded to 0.1 µs
    assert set(speed["kept_float"]) <= set(speed["slower"])
    if speed["kept_float"]:
        lat = speed["latency_ms"]
        assert lat["with float groups"] < lat["int8"]
    kept_nodes = {n for n, d in result.plan.nodes.items() if "slower here" in (d.reason or "")}
    assert {n for n in kept_nodes if result.plan.nodes[n].precision == "float"} == kept_nodes
    assert bool(kept_nodes) == bool(speed["kept_float"])
    guard = speed["never_slower"]
    if guard and guard.get("confirmed") is False:  # read slower at first, not when timed again for longer
        assert guard["first"] > 1 + NOISE and guard["plan_ms"] <= (1 + NOISE) * guard["float_ms"]
        assert not any("slower than float here" in (d.reason or "") for d in result.plan.nodes.values())
    elif guard:  # the plan was slower than float here: what it did, by the rule
        assert guard["plan_ms"] > guard["float_ms"]
        untimed = not guard["tried"] or guard["tried"][-1][1] > 1  # every remaining group went float
        assert untimed or len(guard["kept_float"]) == guard["tried"][-1][0]


def test_without_latency_there_is_no_speed_step():
    result = qcompile.compile(
        SAMPLES / "digits_cnn.onnx", calibration=SAMPLES / "digits_calib.npz", policy="selective", measure_latency=False
    )
    assert result.card["search"]["speed"] is None


def test_a_group_slower_in_int8_stays_int8_when_the_budget_needs_it(rng):
    import numpy as np

    from qcompile.speed import keep_fast
    from qcompile.targets import get_target
    from tests.support.quant_models import conv_model, feeds, planned

    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    asked: list[set[str]] = []

    def never(extra: set[str]) -> bool:
        asked.append(extra)
        return False

    decisions, report = keep_fast(model, plan, get_target("ort-cpu"), samples[0], lambda d: plan, keeps_budget=never)
    assert asked[:1] == ([set(report.slower)] if report.slower else asked[:1])  # then the never-slower step's
    assert all(d.precision != "float" for d in decisions.values())
    assert report.budget_blocked == bool(report.slower) and not report.kept_float
    assert decisions == dict(plan.nodes)
    assert all(np.isfinite(t["int8_us"]) for t in report.slower.values())


def _never_slower_with(rng, monkeypatch, timings, keeps_budget=None):
    """`speed._never_slower` on a three-conv model, with the whole-model timings it gets given in turn
    (float ms, plan ms): the rule under test, not the machine's speed."""
    from qcompile import speed
    from qcompile.passes.quant_groups import quant_groups
    from qcompile.runtime import SessionSource
    from qcompile.targets import get_target
    from tests.support.quant_models import conv_model, feeds, planned

    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    given = iter(timings)
    monkeypatch.setattr(speed, "interleaved_medians_ms", lambda sessions, sample, rounds: list(next(given)))
    report = speed.SpeedReport()
    decisions = speed._never_slower(
        model, dict(plan.nodes), groups, SessionSource.of(model), samples[0], lambda d: plan, keeps_budget, report
    )
    return groups, decisions, report


def test_a_plan_slower_than_float_floats_the_costliest_groups_until_it_is_not(rng, monkeypatch):
    groups, decisions, report = _never_slower_with(rng, monkeypatch, [(1.0, 1.5), (1.0, 1.4), (1.0, 1.2), (1.0, 0.9)])
    assert len(groups) >= 3
    assert report.never_slower == {"float_ms": 1.0, "plan_ms": 1.4, "first": 1.5, "tried": [[1, 1.2], [2, 0.9]],
                                   "kept_float": sorted(g.name for g in groups[:2])}  # fmt: skip
    assert {n for n, d in decisions.items() if d.precision == "float"} == {n for g in groups[:2] for n in g.nodes}
    assert "the int8 model was slower than float here (1.4 ms vs 1 ms)" in decisions[groups[0].nodes[0]].reason


@pytest.mark.parametrize("plan_ms", [1.0, 1.0 + NOISE])
def test_a_plan_no_slower_than_float_within_the_timings_noise_is_left_alone(rng, monkeypatch, plan_ms):
    groups, decisions, report = _never_slower_with(rng, monkeypatch, [(1.0, plan_ms)])
    assert report.never_slower == {} and all(d.precision != "float" for d in decisions.values())
    _, _, slower = _never_slower_with(rng, monkeypatch, [(1.0, 1.0 + 2 * NOISE), (1.0, 1.0 + 2 * NOISE), (1.0, 0.9)])
    assert slower.never_slower["tried"] == [[1, 0.9]]


def test_a_slowness_that_a_longer_timing_does_not_confirm_changes_nothing(rng, monkeypatch):
    from dataclasses import asdict

    from qcompile.card_markdown import _search_lines
    from qcompile.search import SearchReport

    _, decisions, report = _never_slower_with(rng, monkeypatch, [(1.0, 1.0 + 2 * NOISE), (1.0, 1.0 + NOISE / 2)])
    assert all(d.precision != "float" for d in decisions.values())
    assert report.never_slower == {"float_ms": 1.0, "plan_ms": 1.0 + NOISE / 2, "first": 1.0 + 2 * NOISE,
                                   "confirmed": False}  # fmt: skip
    search = SearchReport("fidelity", {"floor": 20.0}, 1.0, 8, 25.0, 25.0, True, speed=asdict(report)).describe()
    text = "\n".join(_search_lines(search))
    assert f"The first timing read the int8 model at {1 + 2 * NOISE:.2f}× float" in text
    assert "so nothing went float for speed" in text


def test_the_budget_vetoes_a_set_before_it_is_timed(rng, monkeypatch):
    asked: list[int] = []

    def two_or_more(extra: set[str]) -> bool:
        asked.append(len(extra))
        return len(extra) >= 2

    groups, _, report = _never_slower_with(
        rng, monkeypatch, [(1.0, 2.0), (1.0, 2.0), (1.0, 0.9)], keeps_budget=two_or_more
    )
    assert asked == [1, 2] and report.never_slower["tried"] == [[2, 0.9]]
    assert report.never_slower["kept_float"] == sorted(g.name for g in groups[:2])


def test_when_no_smaller_set_is_fast_enough_every_group_goes_float_untimed(rng, monkeypatch):
    slow = [(1.0, 1.1)] * 8
    groups, decisions, report = _never_slower_with(rng, monkeypatch, [(1.0, 2.0), (1.0, 2.0), *slow])
    sizes = [k for k, _ in report.never_slower["tried"]]
    assert sizes == [k for k in (1, 2, 4, 8) if k < len(groups)]  # all of them: the float graph, not timed
    assert report.never_slower["kept_float"] == sorted(g.name for g in groups)
    assert {n for g in groups for n in g.nodes} <= {n for n, d in decisions.items() if d.precision == "float"}


def test_the_card_says_the_int8_model_was_slower_and_what_went_float():
    from dataclasses import asdict

    from qcompile.card_markdown import _search_lines
    from qcompile.search import SearchReport
    from qcompile.speed import SpeedReport

    speed = SpeedReport(never_slower={"float_ms": 1.0, "plan_ms": 1.5, "tried": [[1, 1.2], [2, 0.9]],
                                      "kept_float": ["a", "b"]})  # fmt: skip
    search = SearchReport("fidelity", {"floor": 20.0}, 1.0, 8, 25.0, 25.0, True, speed=asdict(speed)).describe()
    text = "\n".join(_search_lines(search))
    assert "**The int8 model was slower than float on this CPU** at one thread (1.500 ms against 1.000 ms)" in text
    assert "(1 group(s) float: 1.20×, 2 group(s) float: 0.90×): **2 group(s) kept in float**" in text
    search["speed"]["never_slower"]["kept_float"] = []
    assert "the budget needed them in int8, so it stays slower than float" in "\n".join(_search_lines(search))
