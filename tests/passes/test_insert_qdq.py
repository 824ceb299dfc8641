import numpy as np
import pytest

from qcompile.errors import QCompileError
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.plan import QuantPlan, QuantSpec
from tests.helpers import check, ops, run
from tests.support.quant_models import conv_model, feeds, gemm_model, gemm_reference, planned


def _inits(model):
    return {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}


def test_matches_numpy_fake_quant_within_one_step(rng):
    model = gemm_model(rng)
    samples = [{"x": rng.normal(size=(1, 6)).astype(np.float32)} for _ in range(16)]
    plan, _ = planned(model, samples)
    inits = _inits(model)
    result = InsertQDQ(plan)(model)
    assert result.modified
    check(model)
    # x, W, r get a Q→DQ pair each; the bias (int32) is left to FoldScales
    assert ops(model) == {"QuantizeLinear": 3, "DequantizeLinear": 3, "Gemm": 1, "Relu": 1}
    assert not InsertQDQ(plan)(model).modified, "a second run must not quantize twice"
    step = plan.tensors["r"].scale[0]
    for s in samples:
        got = run(model, s)["r"]
        want = gemm_reference(inits, plan, s["x"], quantize_bias=False)
        np.testing.assert_allclose(got, want, atol=step * 1.001)


def test_graph_output_keeps_its_name(rng):
    model = gemm_model(rng)
    plan, _ = planned(model, [{"x": rng.normal(size=(1, 6)).astype(np.float32)}])
    InsertQDQ(plan)(model)
    out = model.graph.outputs[0]
    assert out.name == "r" and out.producer().op_type == "DequantizeLinear"


def test_conv_model_runs_and_stays_close(rng):
    model = conv_model(rng)
    samples = feeds(rng)
    reference = [run(model, s) for s in samples]
    plan, _ = planned(model, samples)
    InsertQDQ(plan)(model)
    check(model)
    for s, ref in zip(samples, reference, strict=True):
        got = run(model, s)
        assert np.abs(got["y"] - ref["y"]).max() < 0.2 * np.abs(ref["y"]).max()


def test_plan_naming_a_missing_tensor(rng):
    model = gemm_model(rng)
    with pytest.raises(QCompileError, match="plan quantizes tensor 'ghost', which the model does not have"):
        InsertQDQ(QuantPlan(tensors={"ghost": QuantSpec("uint8", (1.0,), (0,))}))(model)
    with pytest.raises(QCompileError, match="tensor 'x': spec uint8 has no scale"):
        InsertQDQ(QuantPlan(tensors={"x": QuantSpec("uint8")}))(model)
