"""The speed step of the selective policy: per-group times from ORT's profiler, groups slower in
int8 kept float only when the whole model gets faster, every choice explained."""

import pytest

import qcompile
from qcompile.passes.quant_groups import QuantGroup
from qcompile.speed import MIN_GAP_US, TOLERANCE, group_times
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
    assert asked == ([set(report.slower)] if report.slower else [])
    assert report.budget_blocked == bool(report.slower) and not report.kept_float
    assert decisions == dict(plan.nodes)
    assert all(np.isfinite(t["int8_us"]) for t in report.slower.values())
