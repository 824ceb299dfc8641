import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.passes.fold_batchnorm import fold_batchnorm_pass
from tests.helpers import assert_equivalent_and_idempotent, ops


def _bn_model(rng, producer: str, *, bias=True, group=1, **attrs):
    c = 4
    inits = {
        "gamma": rng.uniform(0.5, 2, c),
        "beta": rng.normal(size=c),
        "mean": rng.normal(size=c),
        "var": rng.uniform(0.1, 2, c),
    }
    if producer == "Conv":
        inits["w"] = rng.normal(size=(c, 3, 3, 3))
        node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["p"], "prod", pads=[1, 1, 1, 1])
        x_shape, y_shape = [1, 3, 5, 5], [1, c, 5, 5]
    elif producer == "ConvTranspose":
        inits["w"] = rng.normal(size=(2 * group, c // group, 2, 2))
        node = helper.make_node(
            "ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["p"], "prod", strides=[2, 2], group=group
        )
        x_shape, y_shape = [1, 2 * group, 5, 5], [1, c, 10, 10]
    else:
        inits["w"] = rng.normal(size=(c, 6))
        node = helper.make_node("Gemm", ["x", "w"] + (["b"] if bias else []), ["p"], "prod", transB=1, **attrs)
        x_shape, y_shape = [2, 6], [2, c]
    if bias:
        inits["b"] = rng.normal(size=c)
    bn = helper.make_node("BatchNormalization", ["p", "gamma", "beta", "mean", "var"], ["y"], "bn", epsilon=1e-3)
    graph = helper.make_graph(
        [node, bn],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    return ir.from_proto(model), {"x": rng.normal(size=x_shape).astype(np.float32)}


@pytest.mark.parametrize("producer", ["Conv", "ConvTranspose", "Gemm"])
@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_exactly(rng, producer, bias):
    model, feeds = _bn_model(rng, producer, bias=bias)
    result = assert_equivalent_and_idempotent(fold_batchnorm_pass, model, feeds, rtol=1e-4, atol=1e-5)
    assert result.modified and ops(model) == {producer: 1}
    assert model.graph.outputs[0].name == "y" and model.graph.node(0).name == "prod"  # plans name nodes
    assert set(model.graph.initializers) <= {"w", "b", "w_bias"}  # the statistics are gone


def test_gemm_alpha_beta_and_grouped_conv_transpose_fold_exactly(rng):
    model, feeds = _bn_model(rng, "Gemm", alpha=0.5, beta=2.0)
    assert_equivalent_and_idempotent(fold_batchnorm_pass, model, feeds, rtol=1e-4, atol=1e-5)
    assert ops(model) == {"Gemm": 1}
    model, feeds = _bn_model(rng, "ConvTranspose", group=2)
    assert_equivalent_and_idempotent(fold_batchnorm_pass, model, feeds, rtol=1e-4, atol=1e-5)
    assert ops(model) == {"ConvTranspose": 1}


def test_shared_producer_output_is_not_folded(rng):
    model, feeds = _bn_model(rng, "Conv")
    p = model.graph.node(0).outputs[0]
    model.graph.outputs.append(p)  # the conv output is also read elsewhere
    assert not fold_batchnorm_pass()(model).modified
    assert ops(model)["BatchNormalization"] == 1
