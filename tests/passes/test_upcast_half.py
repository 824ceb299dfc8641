import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.card import render_markdown
from qcompile.errors import QCompileError
from qcompile.passes.upcast_half import UpcastHalf
from tests.helpers import check, run


def half_model(rng, dtype=TensorProto.FLOAT16, extra=()):
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float16)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("Cast", ["r"], ["y"], "to_half", to=dtype),
        *extra,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", dtype, [1, 4, 4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def test_the_model_computes_in_float32_behind_its_half_interface(rng):
    model = half_model(rng)
    x = rng.normal(size=(1, 2, 4, 4)).astype(np.float16)
    want = run(half_model(np.random.default_rng(1234)), {"x": x})["y"]
    assert UpcastHalf()(model).modified
    check(model)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16 and model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    assert model.graph.initializers["w"].dtype == ir.DataType.FLOAT
    got = run(model, {"x": x})["y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not UpcastHalf()(model).modified


def test_a_half_constant_attribute_is_named(rng):
    fill = helper.make_node(
        "ConstantOfShape", ["shape"], ["z"], "zeros", value=numpy_helper.from_array(np.zeros(1, np.float16))
    )
    model = half_model(rng, extra=[fill])
    with pytest.raises(QCompileError, match="ConstantOfShape 'zeros' holds a half-precision constant"):
        UpcastHalf()(model)


def test_a_half_model_compiles_to_integer_kernels_and_says_so(rng):
    data = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float16)} for _ in range(8)]
    with pytest.warns(qcompile.errors.QCompileWarning, match="holds float16/bfloat16 weights: compiled in float32"):
        result = qcompile.compile(half_model(rng), calibration=data, evaluation=data, measure_latency=False)
    assert result.card["ort_kernels"] == {"integer": 1, "float": 0}
    assert result.card["fidelity"]["outputs"][0]["sqnr_db"] > 25
    assert "holds float16/bfloat16 weights: compiled in float32" in render_markdown(result.card)
    proto = result.to_proto()
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
