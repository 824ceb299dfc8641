"""Bias correction (passes.correct_bias): the shift against a numpy reference, and on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import NameFixPass

import qcompile
from qcompile.card_markdown import render_markdown
from qcompile.passes.assign_specs import assign_specs
from qcompile.passes.calibrate import calibrate
from qcompile.passes.correct_bias import (
    BiasCorrection,
    OwnBiases,
    bias_shifts,
    correctable_nodes,
    mean_axes,
    own_bias_values,
)
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.select_precision import select_precision
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import get_target
from tests.helpers import run

FLOAT = TensorProto.FLOAT


def _model(nodes, x_shape: list[int], inits: dict[str, np.ndarray], outputs: list[str]) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def _samples(rng, shape, n=6, mean=3.0):
    return [{"x": (rng.normal(size=shape) + mean).astype(np.float32)} for _ in range(n)]


def _rounding_error(w: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """W − Ŵ for symmetric int8 weights (zero point 0), computed here, not by qcompile."""
    s = np.asarray(scale, np.float64).reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    return w.astype(np.float64) - np.clip(np.rint(w / s), -128, 127) * s


def _shifts(model: ir.Model, samples):
    target = get_target("ort-cpu")
    calib = calibrate(model, samples, mean_axes=mean_axes(model))
    plan = assign_specs(model, target, calib, select_precision(model, target))
    return bias_shifts(model, plan, calib.channel_means), plan


def test_grouped_pointwise_conv_shift_is_the_mean_output_error(rng):
    w = rng.normal(size=(4, 2, 1, 1)).astype(np.float32)
    model = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv", group=2)],
        [1, 4, 5, 5],
        {"w": w, "b": rng.normal(size=4).astype(np.float32)},
        ["y"],
    )
    samples = _samples(rng, (1, 4, 5, 5))
    shifts, plan = _shifts(model, samples)
    dw = _rounding_error(w, plan.tensors["w"].scale_array(), 0)[:, :, 0, 0]
    xs = np.stack([s["x"][0] for s in samples]).astype(np.float64)  # [N, C, H, W]
    groups = [np.einsum("mc,nchw->nmhw", dw[2 * g : 2 * g + 2], xs[:, 2 * g : 2 * g + 2]) for g in range(2)]
    want = np.concatenate(groups, axis=1).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(shifts["conv"], want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("group", [1, 3])
def test_conv_transpose_shift_averages_over_the_strided_taps(rng, group):
    w = rng.normal(size=(3, 2, 2, 2)).astype(np.float32)  # [C, M/group, k, k], kernel = stride
    up = helper.make_node("ConvTranspose", ["x", "w"], ["y"], "up", strides=[2, 2], group=group)
    model = _model([up], [1, 3, 4, 4], {"w": w}, ["y"])
    samples = _samples(rng, (1, 3, 4, 4))
    shifts, plan = _shifts(model, samples)
    spec = plan.tensors["w"]
    dw = _rounding_error(w, spec.scale_array(), spec.axis)
    xs = np.stack([s["x"][0] for s in samples]).astype(np.float64)
    per = 3 // group  # input channels per group; output channel g·2 + m reads group g's
    outs = [
        np.einsum("ncij,cmab->nmiajb", xs[:, g * per : (g + 1) * per], dw[g * per : (g + 1) * per])
        for g in range(group)
    ]
    want = np.concatenate(outs, axis=1).mean(axis=(0, 2, 3, 4, 5))  # every output pixel gets one tap
    np.testing.assert_allclose(shifts["up"], want, rtol=1e-4, atol=1e-9)
    result = qcompile.compile(model, "ort-cpu", samples, samples[:2], measure_latency=False)
    assert result.plan.meta["bias_correction"] == ["up"]  # its int32 bias spec has one scale per output


def test_gemm_shift_goes_into_c_through_alpha_and_beta(rng):
    w = rng.normal(size=(5, 6)).astype(np.float32)
    model = _model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], "fc", transB=1, alpha=0.5, beta=2.0)],
        [3, 6],
        {"w": w, "c": rng.normal(size=5).astype(np.float32)},
        ["y"],
    )
    samples = _samples(rng, (3, 6))
    shifts, plan = _shifts(model, samples)
    dw = _rounding_error(w, plan.tensors["w"].scale_array(), 0)
    xs = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    want = (0.5 * xs @ dw.T).mean(axis=0) / 2.0  # what C must absorb
    np.testing.assert_allclose(shifts["fc"], want, rtol=1e-4, atol=1e-9)


def _systematic_conv(rng, bias: bool = True) -> ir.Model:
    """A 3×3 Conv whose weights all round down by over 0.4 of a step (one weight per channel sets
    the scale, the others sit at 0.4994 of it: 63.42 steps of 8-bit weights, 31.46 of the 7-bit
    ones ORT's target uses on x86 without VNNI), on inputs with mean 5: its int8 output is off by
    several output steps on average, the same sign everywhere."""
    w = np.full((4, 4, 3, 3), 0.4994, np.float32)
    w[:, 0, 0, 0] = 1.0
    inits = {"w": w}
    if bias:
        inits["b"] = np.full(4, -float(w.sum() / 4 * 5.0), np.float32)
    node = helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], "conv", pads=[1, 1, 1, 1])
    return _model([node], [1, 4, 8, 8], inits, ["y"])


def _mean_error(result, model_before: ir.Model, held) -> float:
    errors = [run(result.model, h)["y"] - run(model_before, h)["y"] for h in held]
    return float(np.abs(np.mean(errors, axis=(0, 1, 3, 4))).max())


@pytest.mark.parametrize("bias", [True, False])
def test_on_onnx_runtime_the_corrected_model_loses_its_mean_error(rng, bias):
    model = _systematic_conv(rng, bias)
    calib, held = _samples(rng, (1, 4, 8, 8), 12, mean=5.0), _samples(rng, (1, 4, 8, 8), 6, mean=5.0)
    kept = qcompile.compile(model, "ort-cpu", calib, held, measure_latency=False, bias_correction=False)
    fixed = qcompile.compile(model, "ort-cpu", calib, held, measure_latency=False)
    assert fixed.plan.meta["bias_correction"] == ["conv"] and "bias_correction" not in kept.plan.meta
    before, after = _mean_error(kept, model, held), _mean_error(fixed, model, held)
    assert before > 0.3 and after < before / 4, (before, after)
    assert fixed.card["fidelity"]["outputs"][0]["sqnr_db"] > kept.card["fidelity"]["outputs"][0]["sqnr_db"]
    assert "bias correction: 1 Conv/Gemm" in render_markdown(fixed.card)
    assert "bias correction" not in render_markdown(kept.card)


def test_each_node_gets_a_bias_of_its_own_and_the_float_model_stays(rng):
    w = rng.normal(size=(2, 2, 1, 1)).astype(np.float32)
    b = np.array([0.5, -0.5], np.float32)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y1"], "conv1"),
            helper.make_node("Conv", ["x", "w2", "b"], ["y2"], "conv2"),
            helper.make_node("Conv", ["x", "w"], ["y3"], "conv3"),
        ],
        [1, 2, 3, 3],
        {"w": w, "w2": w * 2, "b": b},
        ["y1", "y2", "y3"],
    )
    feeds = {"x": rng.normal(size=(1, 2, 3, 3)).astype(np.float32)}
    want = run(model, feeds)
    assert OwnBiases()(model).modified
    nodes = {n.name: n for n in model.graph}
    biases = [nodes[k].inputs[2] for k in ("conv1", "conv2", "conv3")]
    assert len({id(v) for v in biases}) == 3 and all(len(v.uses()) == 1 for v in biases)
    np.testing.assert_array_equal(biases[2].const_value.numpy(), np.zeros(2, np.float32))
    got = run(model, feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert not OwnBiases()(model).modified  # idempotent
    floats = own_bias_values(model)
    assert BiasCorrection(floats, {"conv1": np.array([1.0, 2.0])})(model).modified
    np.testing.assert_array_equal(biases[0].const_value.numpy(), b + np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(biases[1].const_value.numpy(), b)
    assert BiasCorrection(floats, {"conv1": np.array([-1.0, 0.0])})(model).modified  # replaces, never adds up
    np.testing.assert_array_equal(biases[0].const_value.numpy(), b + np.array([-1.0, 0.0], np.float32))
    assert BiasCorrection(floats, {})(model).modified and not BiasCorrection(floats, {})(model).modified
    np.testing.assert_array_equal(biases[0].const_value.numpy(), b)


def test_only_quantized_weights_are_corrected(rng):
    model = _systematic_conv(rng)
    target = get_target("ort-cpu")
    calib = calibrate(model, _samples(rng, (1, 4, 8, 8), 4, mean=5.0), mean_axes=mean_axes(model))
    plan = assign_specs(model, target, calib, select_precision(model, target, "naive"))
    assert bias_shifts(model, plan, {}) == {}  # no mean measured: nothing to correct
    assert set(bias_shifts(model, plan, calib.channel_means)) == {"conv"}
    float_weight = QuantPlan({k: v for k, v in plan.tensors.items() if k != "w"}, plan.nodes, plan.meta)
    assert bias_shifts(model, float_weight, calib.channel_means) == {}
    float_node = QuantPlan(plan.tensors, {**plan.nodes, "conv": NodeDecision("float")}, plan.meta)
    assert bias_shifts(model, float_node, calib.channel_means) == {}  # its weight spec pinned, the node float


def test_a_bias_computed_at_run_time_is_left_alone(rng):
    model = _model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], "mean", axes=[0, 2, 3], keepdims=0),
            helper.make_node("Conv", ["x", "w", "m"], ["y"], "conv"),
        ],
        [1, 2, 3, 3],
        {"w": rng.normal(size=(2, 2, 1, 1)).astype(np.float32)},
        ["y"],
    )
    assert correctable_nodes(model) == [] and not OwnBiases()(model).modified


@pytest.mark.parametrize("first,then", [(True, False), (False, True)])
def test_a_saved_plan_reloads_with_bias_correction_on_or_off(rng, first, then):
    model = _systematic_conv(rng, bias=False)
    calib = _samples(rng, (1, 4, 8, 8), 8, mean=5.0)
    plan = qcompile.compile(model, "ort-cpu", calib, calib[:2], measure_latency=False, bias_correction=first).plan
    again = qcompile.compile(model, "ort-cpu", calib, calib[:2], measure_latency=False, bias_correction=then, plan=plan)
    assert ("bias_correction" in again.plan.meta) == then
