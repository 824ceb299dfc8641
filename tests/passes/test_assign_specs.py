import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import NameFixPass

from qcompile.cpu import CpuInfo
from qcompile.errors import QCompileError
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from qcompile.runtime import fused_op_counts, make_session
from tests.helpers import copy, graph_signature, run
from tests.support.quant_models import conv_model, feeds, planned


def test_roles_ties_fusion_and_bias(rng):
    model = conv_model(rng)
    before = graph_signature(model)
    plan, calib = planned(model, feeds(rng))
    assert graph_signature(model) == before  # analyses only read the graph
    t = plan.tensors
    # conv output feeds a fused Relu: not quantized; MaxPool/Flatten share the Relu output's spec
    assert "c" not in t and t["r"] == t["p"] == t["f"]
    # the Gemm's graph output is also read by the int8 Sigmoid, so it is quantized
    assert "y" in t and "s" in t
    assert t["x"].dtype == "uint8" and t["w"].dtype == "int8" and t["w"].axis == 0 and t["w"].symmetric
    w = model.graph.initializers["w"].const_value.numpy()
    np.testing.assert_allclose(
        t["w"].scale_array(),
        np.abs(w).reshape(4, -1).max(1) / t["w"].scale_array().dtype.type(-plan.meta["weight_qrange"][0]),
        rtol=1e-6,
    )
    # bias: int32, scale = input scale × weight scale per channel
    np.testing.assert_allclose(t["b"].scale_array(), t["x"].scale_array() * t["w"].scale_array(), rtol=1e-6)
    assert t["b"].dtype == "int32" and set(t["b"].zero_point) == {0}
    lo, hi = calib.ranges["x"]
    assert t["x"].scale[0] == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)


def test_per_tensor_and_reduced_range(rng):
    model = conv_model(rng)
    no_vnni = CpuInfo("x86_64", "test", frozenset({"avx2"}))
    plan, _ = planned(model, feeds(rng), per_channel=False, cpu=no_vnni)
    assert plan.tensors["w"].axis is None and len(plan.tensors["w"].scale) == 1
    assert plan.meta["weight_qrange"] == [-63, 63]


def test_user_specs_override(rng):
    model = conv_model(rng)
    pinned = QuantPlan(
        tensors={"x": QuantSpec("uint16"), "s": QuantSpec("float32"), "r": QuantSpec("uint8", (0.5,), (0,))}
    )
    plan, _ = planned(model, feeds(rng), pinned=pinned)
    assert plan.tensors["x"].dtype == "uint16" and plan.tensors["x"].scale is not None
    assert "s" not in plan.tensors and plan.tensors["r"].scale == (0.5,)


def test_unknown_tensor_in_user_plan(rng):
    model = conv_model(rng)
    with pytest.raises(QCompileError, match="plan names tensor 'ghost', which the model does not have"):
        planned(model, feeds(rng), pinned=QuantPlan(tensors={"ghost": QuantSpec("int8")}))


def test_a_dead_channel_keeps_its_bias(rng):
    """Weights ~0 in one channel (BatchNorm folding of a dead channel) with a bias of 3: the int32
    bias would need 3 / (s_in · 1e-32) steps; the weight scale is widened so that it fits."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from qcompile.passes.fold_scales import FoldScales
    from qcompile.passes.insert_qdq import InsertQDQ
    from qcompile.runtime import make_session, run_session

    w = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    w[1] = 1e-30
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.5, 3.0], np.float32), "b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    samples = [{"x": rng.normal(size=(1, 3, 4, 4)).astype(np.float32)} for _ in range(4)]
    plan, _ = planned(model, samples)
    assert plan.meta["weights_widened_for_bias"] == ["w"]
    want = run_session(make_session(model), samples[0])["y"]
    InsertQDQ(plan)(model)
    FoldScales(plan)(model)
    got = run_session(make_session(model), samples[0])["y"]
    np.testing.assert_allclose(got[0, 1], 3.0, atol=3 * plan.tensors["y"].scale[0])  # the dead channel is its bias
    assert np.abs(got - want).max() < 4 * plan.tensors["y"].scale[0]


def _matmul_then(rng, op: str) -> ir.Model:
    """x [1, 6, 16] → MatMul(w) → `op` (an Add of a constant bias, or a Sigmoid) → y."""
    inits = {"w": rng.normal(size=(16, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)}
    after = helper.make_node("Add", ["h", "b"], ["y"], "bias") if op == "Add" else helper.make_node(op, ["h"], ["y"])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], "mm"), after],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def test_a_matmul_read_only_by_float_nodes_writes_float_from_its_integer_kernel(rng):
    """ORT runs DQ → MatMul with a float output as an integer kernel (MatMulIntegerToFloat; with a
    bias Add and static shapes, MatMul + Add become QGemm once the bias is int32): quantizing the
    output too would only add roundings before the float reader."""
    model = _matmul_then(rng, "Add")
    samples = [{"x": rng.normal(size=(1, 6, 16)).astype(np.float32)} for _ in range(8)]
    int8_add, _ = planned(model, samples)
    float_add, _ = planned(model, samples, pinned=QuantPlan(nodes={"bias": NodeDecision("float", "test")}))
    assert "h" in int8_add.tensors and "h" not in float_add.tensors and "x" in float_add.tensors
    assert float_add.tensors["b"].dtype == "int32" and int8_add.tensors["b"].dtype == "uint8"
    np.testing.assert_allclose(
        float_add.tensors["b"].scale_array(),
        float_add.tensors["x"].scale_array() * float_add.tensors["w"].scale_array(),
    )
    errors = {}
    for name, plan in (("float", float_add), ("int8", int8_add)):
        compiled = copy(model)
        ir.passes.Sequential(InsertQDQ(plan), FoldScales(plan))(compiled)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "opt.onnx"
            make_session(compiled, optimized_model_path=path)
            counts = fused_op_counts(onnx.load(str(path)).graph.node)
        assert counts["integer"] >= 1 and counts["float"] == 0, (name, counts)
        errors[name] = np.mean(
            [np.abs(run(compiled, s, optimize=True)["y"] - run(model, s)["y"]).mean() for s in samples]
        )
    assert errors["float"] < errors["int8"], errors
    # an int8 reader (Sigmoid) still needs the MatMul's output quantized
    sigmoid = _matmul_then(rng, "Sigmoid")
    assert "h" in planned(sigmoid, samples)[0].tensors
