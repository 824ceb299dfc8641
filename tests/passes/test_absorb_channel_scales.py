import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import qcompile
from qcompile.card import render_markdown
from qcompile.errors import QCompileError
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


def test_a_pinned_scale_per_channel_before_a_pointwise_conv_reaches_it_in_float(rng, tmp_path):
    model, samples, result = _compile(rng, plan=_pinned([3] * 8, "t3"))
    assert result.plan.tensors["t3"].per_channel
    assert _kernels(result.to_proto(), tmp_path).count("QLinearConv") == 2  # the 1×1 Conv reads t3 · r in float
    planned = copy(model)
    ir.passes.Sequential(InsertQDQ(result.plan), FoldScales(result.plan))(planned)
    want = _outputs(planned, samples[12:], fused=False)
    assert sqnr_db(want, _outputs(result.to_proto(), samples[12:], fused=True)) > 30


def test_a_pinned_scale_per_channel_needs_one_zero_point(rng):
    with pytest.raises(QCompileError, match="'t1': a scale per channel needs one zero point for every channel"):
        _compile(rng, plan=_pinned([3, 3, 3, 3, 3, 3, 3, 4]))


def test_a_scale_per_channel_on_a_graph_output_is_refused(rng):
    plan = QuantPlan(tensors={"y": QuantSpec("uint8", scale=(0.1, 0.2, 0.1, 0.1), zero_point=(9,) * 4, axis=1)})
    with pytest.raises(
        QCompileError, match="graph output 'y' cannot take a scale per channel: only a tensor that Convs"
    ):
        _compile(rng, plan=plan)


def test_a_target_without_absorbing_kernels_refuses_a_scale_per_channel(rng):
    one_scale = dataclasses.replace(get_target("ort-cpu"), absorbs_channel_scales=False)
    with pytest.raises(LegalityError, match="activation 't1' has a scale per channel; ort-cpu's integer kernels take"):
        _compile(rng, one_scale, plan=_pinned([3] * 8))
