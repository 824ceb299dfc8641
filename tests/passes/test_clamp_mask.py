"""ClampAttentionMask (huge negative mask constants → −100) and UnshareQuantizedData."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from qcompile.passes.clamp_mask import MASK_VALUE, ClampAttentionMask
from qcompile.passes.fold_scales import UnshareQuantizedData
from tests.helpers import copy, run

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs: dict[str, tuple[int, list]], outputs: list[str], inits: dict[str, np.ndarray]) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, t, shape) for k, (t, shape) in inputs.items()],
        [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _attention(c: float) -> ir.Model:
    """probs = Softmax(scores + (1 − mask) · c)."""
    nodes = [
        helper.make_node("Sub", ["one", "mask"], ["inverted"], "invert"),
        helper.make_node("Mul", ["inverted", "c"], ["bias"], "scale_mask"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], "add_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], "softmax", axis=-1),
    ]
    inputs = {"scores": (FLOAT, [1, 4, 4]), "mask": (FLOAT, [1, 1, 4])}
    return _model(nodes, inputs, ["probs"], {"one": np.float32(1.0), "c": np.array(c, np.float32)})


def _const(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def test_the_mask_constant_becomes_minus_100_and_the_probabilities_stay():
    model = _attention(-3.4e38)
    before = copy(model)
    assert ClampAttentionMask()(model).modified
    assert _const(model, "c") == np.float32(MASK_VALUE) == np.float32(-100)
    assert _const(model, "one") == 1.0
    rng = np.random.default_rng(0)
    for _ in range(8):
        scores = rng.uniform(-5, 5, (1, 4, 4)).astype(np.float32)
        mask = rng.integers(0, 2, (1, 1, 4)).astype(np.float32)
        mask[..., 0] = 1  # a key every query attends to (all-masked rows differ by design)
        mask[..., 1] = 0
        feeds = {"scores": scores, "mask": mask}
        want, got = run(before, feeds)["probs"], run(model, feeds)["probs"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        # and both are the Softmax over the unmasked keys only, by numpy
        e = np.exp(scores - scores.max(-1, keepdims=True)) * mask
        np.testing.assert_allclose(want, e / e.sum(-1, keepdims=True), rtol=0, atol=1e-6)


def test_a_huge_constant_off_the_softmax_paths_is_left_alone():
    nodes = [
        helper.make_node("Softmax", ["scores"], ["probs"], "softmax", axis=-1),
        helper.make_node("Add", ["x", "c"], ["y"], "add"),
    ]
    inputs = {"scores": (FLOAT, [1, 4]), "x": (FLOAT, [1, 4])}
    model = _model(nodes, inputs, ["probs", "y"], {"c": np.full(4, -3.4e38, np.float32)})
    assert not ClampAttentionMask()(model).modified
    np.testing.assert_array_equal(_const(model, "c"), np.full(4, -3.4e38, np.float32))


def test_a_huge_constant_reaching_softmax_through_a_matmul_is_left_alone():
    """Only elementwise or data-movement nodes may sit between a mask constant and the Softmax."""
    c = np.array([[-1e4, -2e4, -3e4, -4e4]] * 4, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "c"], ["m"], "matmul"),
        helper.make_node("Softmax", ["m"], ["probs"], "softmax", axis=-1),
    ]
    model = _model(nodes, {"x": (FLOAT, [1, 4])}, ["probs"], {"c": c})
    before = copy(model)
    assert not ClampAttentionMask()(model).modified
    np.testing.assert_array_equal(_const(model, "c"), c)
    x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    np.testing.assert_allclose(run(model, {"x": x})["probs"], run(before, {"x": x})["probs"], atol=1e-6)


def test_a_small_negative_constant_is_left_alone():
    model = _attention(-5.0)
    assert not ClampAttentionMask()(model).modified
    assert _const(model, "c") == np.float32(-5.0)


def _shared_data(same_params: bool) -> ir.Model:
    nodes = [
        helper.make_node("DequantizeLinear", ["data", "s1", "z"], ["y1"], "dq1"),
        helper.make_node("DequantizeLinear", ["data", "s1" if same_params else "s2", "z"], ["y2"], "dq2"),
    ]
    inits = {
        "data": np.array([0, 7, 128, 255], np.uint8),
        "s1": np.float32(0.5),
        "s2": np.float32(0.25),
        "z": np.uint8(3),
    }
    if same_params:
        del inits["s2"]
    return _model(nodes, {}, ["y1", "y2"], inits)


def test_integer_data_read_with_two_scales_is_copied():
    model = _shared_data(same_params=False)
    before = copy(model)
    assert UnshareQuantizedData()(model).modified
    dq1, dq2 = model.graph.node("dq1"), model.graph.node("dq2")
    assert dq1.inputs[0] is not dq2.inputs[0]
    assert dq1.inputs[0].is_initializer() and dq2.inputs[0].is_initializer()
    for dq in (dq1, dq2):
        np.testing.assert_array_equal(dq.inputs[0].const_value.numpy(), np.array([0, 7, 128, 255], np.uint8))
        assert dq.inputs[0].dtype == ir.DataType.UINT8
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    want, got = run(before, {}), run(model, {})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(got["y2"], (np.array([0, 7, 128, 255]) - 3) * np.float32(0.25))


def test_integer_data_read_with_one_scale_stays_shared():
    model = _shared_data(same_params=True)
    assert not UnshareQuantizedData()(model).modified
    dq1, dq2 = model.graph.node("dq1"), model.graph.node("dq2")
    assert dq1.inputs[0] is dq2.inputs[0] is model.graph.initializers["data"]
    assert len(model.graph.initializers) == 3
