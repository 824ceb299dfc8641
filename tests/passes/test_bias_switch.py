"""Bias switches in the switchable model (passes.bias_switch): the corrected bias exactly when the
weight is rounded, checked against a float model built with numpy's Ŵ and b + δ; searches score
candidates as they will compile."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import qcompile
from qcompile.budget import Budget, parse_metric
from qcompile.metrics import OutputKind
from qcompile.passes.assign_specs import assign_specs
from qcompile.passes.calibrate import calibrate
from qcompile.passes.correct_bias import bias_shifts, mean_axes
from qcompile.passes.quant_groups import quant_groups
from qcompile.passes.select_precision import select_precision
from qcompile.passes.switchable import BASE, Evaluator, switchable_model
from qcompile.runtime import make_session, run_session
from qcompile.targets import get_target
from tests.passes.test_correct_bias import _model, _rounding_error, _samples, _systematic_conv


def _planned(model, samples):
    target = get_target("ort-cpu")
    calib = calibrate(model, samples, mean_axes=mean_axes(model))
    return assign_specs(model, target, calib, select_precision(model, target)), calib


def _flags(switches, on: set[str]) -> dict[str, np.ndarray]:
    return {s[BASE]: np.array(t in on) for t, (s, _) in switches.items()}


def _conv_with(w: np.ndarray, b: np.ndarray):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv", pads=[1, 1, 1, 1])
    return _model([node], [1, 4, 8, 8], {"w": w.astype(np.float32), "b": b.astype(np.float32)}, ["y"])


def test_the_bias_is_corrected_exactly_when_its_weight_is_rounded(rng):
    model = _systematic_conv(rng)
    samples = _samples(rng, (1, 4, 8, 8), 8, mean=5.0)
    plan, calib = _planned(model, samples)
    switchable, switches = switchable_model(model, plan, shifts=bias_shifts(model, plan, calib.channel_means))
    session = make_session(switchable, optimize=False)
    w, b = (model.graph.initializers[n].const_value.numpy() for n in ("w", "b"))
    dw = _rounding_error(w, plan.tensors["w"].scale_array(), 0)  # W − Ŵ, numpy's own rounding
    mu = np.mean([s["x"][0].astype(np.float64) for s in samples], axis=(0, 2, 3))
    delta = np.einsum("mck,c->m", dw.reshape(4, 4, 9), mu)
    rounded = make_session(_conv_with(w - dw, b + delta))
    floats = make_session(model)
    for sample in samples[:3]:
        want, got = run_session(rounded, sample)["y"], run_session(session, {**sample, **_flags(switches, {"w"})})
        np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-4)
        off = run_session(session, {**sample, **_flags(switches, set())})
        np.testing.assert_allclose(off["y"], run_session(floats, sample)["y"], rtol=1e-5, atol=1e-4)
    assert np.abs(delta).min() > 0.3  # the fixture's rounding is systematic: the test sees the shift


def _score(model, samples, means) -> float:
    plan, _ = _planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    budget = Budget(parse_metric("sqnr"), floor=0.0)
    return Evaluator(model, plan, groups, samples, {"y": OutputKind()}, budget, means=means).score(set()).value


@pytest.mark.parametrize("correct", [True, False])
def test_the_hybrid_search_judges_int8_as_it_will_compile(rng, correct):
    """With a floor between int8's SQNR uncorrected and corrected, the search keeps the Conv in
    int8 only when it scores candidates corrected, as the compiled model is."""
    model = _systematic_conv(rng)
    calib, held = _samples(rng, (1, 4, 8, 8), 24, mean=5.0), _samples(rng, (1, 4, 8, 8), 6, mean=5.0)
    means = calibrate(model, calib, mean_axes=mean_axes(model)).channel_means
    plain, corrected = _score(model, calib, None), _score(model, calib, means)
    assert corrected > plain + 6, (plain, corrected)
    floor = (plain + corrected) / 2
    result = qcompile.compile(
        model, "ort-cpu", calib, held, policy="hybrid", metric="sqnr", floor=floor, margin=0.0,
        measure_latency=False, bias_correction=correct,
    )  # fmt: skip
    kept_float = result.card["search"]["float_groups"]
    assert (kept_float == []) == correct, (plain, corrected, kept_float)
