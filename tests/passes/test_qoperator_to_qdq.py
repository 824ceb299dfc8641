import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qcompile.errors import QCompileError
from qcompile.passes.qoperator_to_qdq import qoperator_to_qdq
from tests.support.quant_models import feeds
from tests.support.quantized_files import ort_static


def _rewritten(path):
    model = ir.from_proto(onnx.load(path))
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    assert qoperator_to_qdq(model)
    return ir.to_proto(model)


def test_the_qdq_form_gives_the_same_bits_on_onnx_runtime(tmp_path, rng):
    _, path = ort_static(tmp_path, rng, "QOperator")
    proto = _rewritten(path)
    ops = {n.op_type for n in proto.graph.node}
    assert not any(op.startswith("QLinear") or op == "QGemm" for op in ops)
    assert {"Conv", "Gemm", "Sigmoid", "MaxPool"} <= ops
    given = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ours = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert {"QLinearConv", "QGemm", "QLinearSigmoid"} <= fused  # ORT fuses it back
    for s in feeds(rng, 8):
        for a, b in zip(given.run(None, s), ours.run(None, s), strict=True):
            np.testing.assert_array_equal(a, b)


def test_an_op_without_a_rewrite_is_named():
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], "q"),
        helper.make_node("QLinearSoftmax", ["x_q", "s", "z", "s", "z"], ["y_q"], "softmax", domain="com.microsoft"),
        helper.make_node("DequantizeLinear", ["y_q", "s", "z"], ["y"], "dq"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [s, z],
    )  # fmt: skip
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(QCompileError, match="QLinearSoftmax 'softmax' has no QDQ rewrite in qcompile yet"):
        qoperator_to_qdq(ir.from_proto(proto))


def _qlinear_conv(scale_from_node: bool):
    inits = {
        "s": np.array(0.1, np.float32),
        "z": np.array(0, np.uint8),
        "w": np.ones((2, 1, 1, 1), np.int8),
        "ws": np.array(0.01, np.float32),
        "wz": np.array(0, np.int8),
        "b": np.zeros(2, np.int32),
    }
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], "q")]
    x_scale = "s"
    if scale_from_node:
        nodes.append(helper.make_node("Identity", ["s"], ["s_copy"], "copy"))
        x_scale = "s_copy"
    nodes += [
        helper.make_node("QLinearConv", ["x_q", x_scale, "z", "w", "ws", "wz", "s", "z", "b"], ["y_q"], "conv"),
        helper.make_node("DequantizeLinear", ["y_q", "s", "z"], ["y"], "dq"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def test_run_time_scales_are_refused():
    qoperator_to_qdq(_qlinear_conv(False))  # stored scales: rewritten
    with pytest.raises(QCompileError, match="QLinearConv 'conv': its scales are computed at run time"):
        qoperator_to_qdq(_qlinear_conv(True))


def test_a_missing_scale_is_named():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], "q"),
        helper.make_node("QLinearMatMul", ["x_q", "s", "z", "x_q"], ["y_q"], "mm"),  # b's scale left out
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y_q", TensorProto.UINT8, [2, 2])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    with pytest.raises(QCompileError, match="QLinearMatMul 'mm': input 3 or its scale is missing"):
        qoperator_to_qdq(model)
