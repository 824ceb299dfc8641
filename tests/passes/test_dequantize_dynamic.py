import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qcompile.errors import QCompileError
from qcompile.passes.dequantize_dynamic import dequantize_dynamic
from tests.support.quant_models import feeds
from tests.support.quantized_files import ort_dynamic


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_float_model_the_int8_weights_stand_for(tmp_path, rng):
    path = ort_dynamic(tmp_path, rng)
    dynamic = onnx.load(path)
    stored = {i.name: numpy_helper.to_array(i) for i in dynamic.graph.initializer}
    model = ir.from_proto(dynamic)
    assert dequantize_dynamic(model) == 2
    ops = [n.op_type for n in model.graph]
    assert (
        "Conv" in ops and "MatMul" in ops and not {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} & set(ops)
    )
    # the reference: the float model with its weights replaced by (W_q − z)·s, computed here in numpy
    reference = onnx.load(tmp_path / "float.onnx")
    for init in reference.graph.initializer:
        if init.name in ("w", "fw"):
            q, z, s = (stored[f"{init.name}_{k}"] for k in ("quantized", "zero_point", "scale"))
            w = ((q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    ours, want = _session(ir.to_proto(model)), _session(reference)
    for sample in feeds(rng, 4):
        for a, b in zip(ours.run(None, sample), want.run(None, sample), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_an_unknown_pattern_is_named(tmp_path, rng):
    proto = onnx.load(ort_dynamic(tmp_path, rng))
    cast = next(n for n in proto.graph.node if n.op_type == "Cast")
    cast.op_type = "Identity"  # the integer result no longer cast to float
    del cast.attribute[:]
    with pytest.raises(QCompileError, match=r"ConvInteger '\w*': its output is not cast to float and scaled"):
        dequantize_dynamic(ir.from_proto(proto))


def _edited(tmp_path, rng, edit):
    proto = onnx.load(ort_dynamic(tmp_path, rng))
    edit(proto)
    return ir.from_proto(proto)


def test_an_op_not_fed_by_dynamic_quantization_is_named(tmp_path, rng):
    def direct(proto):
        conv = next(n for n in proto.graph.node if n.op_type == "ConvInteger")
        proto.graph.node.insert(0, onnx.helper.make_node("Cast", ["x"], ["x_u8"], "to_u8", to=onnx.TensorProto.UINT8))
        conv.input[0] = "x_u8"

    with pytest.raises(QCompileError, match=r"ConvInteger '\w*': not a dynamically quantized op with stored weights"):
        dequantize_dynamic(_edited(tmp_path, rng, direct))


def test_an_output_not_scaled_back_is_named(tmp_path, rng):
    def unscaled(proto):
        mul = next(n for n in proto.graph.node if n.op_type == "Mul" and "cast_output" in n.input[0])
        mul.op_type = "Add"

    with pytest.raises(QCompileError, match=r"ConvInteger '\w*': its output is not scaled by s_x·s_W"):
        dequantize_dynamic(_edited(tmp_path, rng, unscaled))


def test_a_weight_scale_computed_at_run_time_is_named(tmp_path, rng):
    def runtime_scale(proto):
        factor = next(n for n in proto.graph.node if n.op_type == "Mul" and "w_scale" in n.input)
        proto.graph.node.insert(0, onnx.helper.make_node("Identity", ["w_scale"], ["w_scale_copy"], "copy"))
        factor.input[list(factor.input).index("w_scale")] = "w_scale_copy"

    with pytest.raises(QCompileError, match=r"ConvInteger '\w*': its weight scale is not stored"):
        dequantize_dynamic(_edited(tmp_path, rng, runtime_scale))


def _model(nodes, inputs, outputs, inits=()):
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=opsets))


def test_an_lstm_whose_weights_are_not_stored_is_named():
    t = onnx.TensorProto
    model = _model(
        [onnx.helper.make_node("DynamicQuantizeLSTM", ["x", "w", "r"], ["y"], "lstm", domain="com.microsoft")],
        [onnx.helper.make_tensor_value_info(n, t.FLOAT if n == "x" else t.INT8, None) for n in ("x", "w", "r")],
        [onnx.helper.make_tensor_value_info("y", t.FLOAT, None)],
    )
    with pytest.raises(QCompileError, match="DynamicQuantizeLSTM 'lstm': its weights or scales are not stored"):
        dequantize_dynamic(model)


def test_an_integer_op_inside_a_branch_is_named():
    t = onnx.TensorProto
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "b"], ["c"], "inner")],
        "then",
        [],
        [onnx.helper.make_tensor_value_info("c", t.INT32, None)],
    )
    other = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["b", "a"], ["d"], "other")],
        "else",
        [],
        [onnx.helper.make_tensor_value_info("d", t.INT32, None)],
    )
    model = _model(
        [onnx.helper.make_node("If", ["flag"], ["y"], "branch", then_branch=branch, else_branch=other)],
        [onnx.helper.make_tensor_value_info(n, t.BOOL if n == "flag" else t.UINT8, [2, 2]) for n in ("flag", "a", "b")],
        [onnx.helper.make_tensor_value_info("y", t.INT32, None)],
    )
    with pytest.raises(QCompileError, match="MatMulInteger '\\w+' is still integer after dequantizing; not rewritten"):
        dequantize_dynamic(model)
