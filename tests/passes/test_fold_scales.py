import numpy as np

from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.quant_math import int_range
from tests.helpers import check, copy, ops, run
from tests.support.quant_models import conv_model, feeds, gemm_model, gemm_reference, planned


def test_weights_and_bias_stored_quantized_and_numbers_match_numpy(rng):
    model = gemm_model(rng)
    samples = [{"x": rng.normal(size=(1, 6)).astype(np.float32)} for _ in range(16)]
    plan, _ = planned(model, samples)
    inits = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    InsertQDQ(plan)(model)
    result = FoldScales(plan)(model)
    assert result.modified
    check(model)
    # no QuantizeLinear reads a constant any more; W is int8, b is int32, nothing float is left of them
    assert ops(model) == {"QuantizeLinear": 2, "DequantizeLinear": 4, "Gemm": 1, "Relu": 1}
    arrays = [v.const_value.numpy() for v in model.graph.initializers.values()]
    assert [a.dtype.name for a in arrays if a.shape == (5, 6)] == ["int8"]
    assert "int32" in {a.dtype.name for a in arrays if a.shape == (5,)}
    step = plan.tensors["r"].scale[0]
    for s in samples:
        np.testing.assert_allclose(
            run(model, s)["r"], gemm_reference(inits, plan, s["x"], quantize_bias=True), atol=step * 1.001
        )
    assert not FoldScales(plan)(model).modified


def test_folding_preserves_the_qdq_numbers(rng):
    model = conv_model(rng)
    samples = feeds(rng)
    plan, _ = planned(model, samples)
    InsertQDQ(plan)(model)
    before = copy(model)
    FoldScales(plan)(model)
    check(model)
    stored = [
        v.const_value.numpy() for v in model.graph.initializers.values() if v.const_value.numpy().dtype == np.int8
    ]
    assert stored and all(np.abs(w).max() <= int_range("int8", symmetric=True).qmax for w in stored)
    for s in samples:
        a, b = run(before, s), run(model, s)
        # only the bias rounding differs: at most a step or two of each output's scale
        np.testing.assert_allclose(a["s"], b["s"], atol=2 * plan.tensors["s"].scale[0])


def test_requantization_pairs_merge(rng):
    from tests.helpers import parse

    model = parse("""<ir_version: 10, opset_import: ["": 21]>
g (float[4] x) => (float[4] y) <float s = {0.1}, uint8 z = {3}> {
    q1 = QuantizeLinear(x, s, z)
    d1 = DequantizeLinear(q1, s, z)
    q2 = QuantizeLinear(d1, s, z)
    d2 = DequantizeLinear(q2, s, z)
    y = Relu(d2)
}""")
    x = {"x": np.linspace(-1, 1, 4).astype(np.float32)}
    want = run(model, x)["y"]
    from qcompile.plan import QuantPlan

    assert FoldScales(QuantPlan())(model).modified
    assert ops(model) == {"QuantizeLinear": 1, "DequantizeLinear": 1, "Relu": 1}
    np.testing.assert_array_equal(run(model, x)["y"], want)
