import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.card import render_markdown
from qcompile.errors import QCompileError
from qcompile.passes.absorb_channel_scales import AbsorbChannelScales
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.plan import QuantPlan, QuantSpec
from qcompile.quant_math import sqnr_db
from qcompile.targets import get_target
from qcompile.targets.base import LegalityError
from tests.core.test_channel_scales import hardswish_feeds, hardswish_net
from tests.helpers import copy


def _outputs(model: ir.Model | onnx.ModelProto, samples, fused: bool) -> np.ndarray:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    if not fused:  # the QDQ graph as written: per-channel Q/DQ run as they are
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.stack([session.run(["y"], s)[0] for s in samples])


def _kernels(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def _compile(rng, target="ort-cpu", plan=None):
    model, samples = hardswish_net(rng), hardswish_feeds(rng, 16)
    return (
        model,
        samples,
        qcompile.compile(
            copy(model), target, samples[:12], samples[12:], plan=plan, measure_latency=False, bias_correction=False
        ),
    )


def test_spread_channels_get_scales_that_ort_runs_in_integer_kernels(rng, tmp_path):
    model, samples, result = _compile(rng)
    specs = result.plan.tensors
    assert {t for t in ("t0", "t1", "t2", "t3") if specs[t].per_channel} == {"t0", "t1", "t2"}
    assert set(result.plan.meta["channel_scales"]) == {"t0", "t1", "t2"}
    widest = max(result.plan.meta["channel_scales"].values())
    line = f"scales per channel: 3 activation(s) whose channels' ranges spread (up to {widest:g}×"
    assert line in render_markdown(result.card)
    assert _kernels(result.to_proto(), tmp_path).count("QLinearConv") == 3  # every Conv still integer
    # the rewritten model computes what the plan's per-channel Q/DQ compute (run as written)
    planned = copy(model)
    ir.passes.Sequential(InsertQDQ(result.plan), FoldScales(result.plan))(planned)
    held = samples[12:]
    want = _outputs(planned, held, fused=False)
    assert sqnr_db(want, _outputs(result.to_proto(), held, fused=False)) > 60
    assert sqnr_db(want, _outputs(result.to_proto(), held, fused=True)) > 30  # ORT's integer rounding
    # against one scale per tensor (a target that cannot absorb them), on ORT's integer kernels
    one_scale = dataclasses.replace(get_target("ort-cpu"), absorbs_channel_scales=False)
    per_tensor = qcompile.compile(
        copy(model), one_scale, samples[:12], held, measure_latency=False, bias_correction=False
    ).to_proto()
    reference = _outputs(model, held, fused=True)
    channel, tensor = (sqnr_db(reference, _outputs(m, held, True)) for m in (result.to_proto(), per_tensor))
    gain = channel - tensor
    assert gain > 6  # a bit or more (8 dB here: t3, before the 1×1 Conv, keeps one scale)


def _pinned(zero_points: list[int], name: str = "t1") -> QuantPlan:
    scales = tuple(float(s) for s in np.linspace(0.01, 0.2, 8))
    return QuantPlan(tensors={name: QuantSpec("uint8", scale=scales, zero_point=tuple(zero_points), axis=1)})


def _as_planned(model: ir.Model, result, samples) -> float:
    """SQNR of the compiled model (ORT, fused) against the plan's Q/DQ run as written."""
    planned = copy(model)
    ir.passes.Sequential(InsertQDQ(result.plan), FoldScales(result.plan))(planned)
    return sqnr_db(_outputs(planned, samples, fused=False), _outputs(result.to_proto(), samples, fused=True))


def test_a_pinned_scale_per_channel_before_a_pointwise_conv_reaches_it_in_float(rng, tmp_path):
    model, samples, result = _compile(rng, plan=_pinned([3] * 8, "t3"))
    assert result.plan.tensors["t3"].per_channel
    assert _kernels(result.to_proto(), tmp_path).count("QLinearConv") == 2  # the 1×1 Conv reads t3 · r in float
    assert _as_planned(model, result, samples[12:]) > 30


def test_per_tensor_weights_take_the_channel_scales_too(rng, tmp_path):
    model, samples = hardswish_net(rng), hardswish_feeds(rng, 16)
    result = qcompile.compile(
        copy(model), "ort-cpu", samples[:12], samples[12:], per_channel=False, measure_latency=False
    )
    assert result.plan.tensors["t1"].per_channel and not result.plan.tensors["w1"].per_channel
    assert _kernels(result.to_proto(), tmp_path).count("QLinearConv") == 3  # the depthwise bias scale fits
    assert _as_planned(model, result, samples[12:]) > 30


@pytest.mark.parametrize(
    "spec, problem",
    [
        (
            QuantSpec("uint8", scale=tuple(np.linspace(0.01, 0.2, 8)), zero_point=(3,) * 7 + (4,), axis=1),
            r"with zero points \[3, 4\] \(the integer kernels take one for every channel\)",
        ),
        (
            QuantSpec("uint8", scale=tuple(np.linspace(0.01, 0.2, 12)), zero_point=(3,) * 12, axis=3),
            r"along axis 3 of a rank-4 tensor \(only axis 1, the channels\)",
        ),
    ],
    ids=["two zero points", "axis 3"],
)
def test_a_pinned_scale_per_channel_it_cannot_fold_is_refused(rng, spec, problem):
    with pytest.raises(QCompileError, match=f"tensor 't1': ort-cpu cannot take a scale per channel {problem}"):
        _compile(rng, plan=QuantPlan(tensors={"t1": spec}))


def test_a_scale_per_channel_on_a_graph_output_is_multiplied_back(rng, tmp_path):
    spec = QuantSpec("uint8", scale=(0.1, 0.2, 0.1, 0.1), zero_point=(9,) * 4, axis=1)
    model, samples, result = _compile(rng, plan=QuantPlan(tensors={"y": spec}))
    assert _kernels(result.to_proto(), tmp_path).count("QLinearConv") == 3
    assert _as_planned(model, result, samples[12:]) > 30


def test_a_scale_per_channel_on_a_graph_input_goes_through_a_mul(rng, tmp_path):
    spec = QuantSpec("uint8", scale=(0.01, 0.03, 0.02), zero_point=(128,) * 3, axis=1)
    model, samples, result = _compile(rng, plan=QuantPlan(tensors={"x": spec}))
    assert "Mul" in _kernels(result.to_proto(), tmp_path)
    assert _as_planned(model, result, samples[12:]) > 30


def test_pins_leave_only_their_own_tensors_in_the_card(rng):
    pins = QuantPlan(tensors={"t1": QuantSpec("uint8"), "t2": QuantSpec("float32")})
    _, _, result = _compile(rng, plan=pins)
    assert set(result.plan.meta["channel_scales"]) == {"t0"}


def test_a_target_without_absorbing_kernels_refuses_a_scale_per_channel(rng):
    one_scale = dataclasses.replace(get_target("ort-cpu"), absorbs_channel_scales=False)
    with pytest.raises(LegalityError, match="activation 't1' has a scale per channel; ort-cpu's integer kernels take"):
        _compile(rng, one_scale, plan=_pinned([3] * 8))


def _q_model(body_q: bool) -> ir.Model:
    """x → Q (two channels, axis 1) → T_q as a graph output, or the same Q inside an If's branch."""
    s, z = (
        numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "s"),
        numpy_helper.from_array(np.array([3, 3], np.uint8), "z"),
    )
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["t_q"], axis=1)
    out = helper.make_tensor_value_info("t_q", TensorProto.UINT8, [1, 2, 2, 2])
    if not body_q:
        graph = helper.make_graph([q], "g", [_x_info()], [out], [s, z])
    else:
        branch = helper.make_graph([q], "b", [], [out])
        cond = numpy_helper.from_array(np.array(True), "c")
        node = helper.make_node("If", ["c"], ["t_q"], then_branch=branch, else_branch=branch)
        graph = helper.make_graph([node], "g", [_x_info()], [out], [s, z, cond])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def _x_info():
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])


@pytest.mark.parametrize(
    "body_q, problem",
    [(False, "read as integers by something other than a DequantizeLinear"), (True, "inside an If/Loop/Scan body")],
    ids=["integers read", "If body"],
)
def test_the_pass_refuses_what_it_cannot_fold(body_q, problem):
    with pytest.raises(QCompileError, match=f"tensor 'x': ort-cpu cannot take a scale per channel {problem}"):
        AbsorbChannelScales()(_q_model(body_q))
