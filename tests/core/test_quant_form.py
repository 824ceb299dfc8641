import numpy as np
import onnx_ir as ir
import pytest

from qcompile.model_io import load_model
from qcompile.quant_form import detect_form
from tests.support.quant_models import conv_model
from tests.support.quantized_files import ort_dynamic, ort_static, qat_export


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    rng = np.random.default_rng(0)
    float_path, qdq = ort_static(folder, rng)
    _, qoperator = ort_static(tmp_path_factory.mktemp("qoperator"), rng, "QOperator")
    return {"float": float_path, "qdq": qdq, "qoperator": qoperator, "dynamic": ort_dynamic(folder, rng)}


def test_each_form_is_named(files, rng):
    assert detect_form(load_model(files["float"])).is_float
    qdq = detect_form(load_model(files["qdq"]))
    assert qdq.kinds == ("qdq",) and qdq.ops == {"QuantizeLinear": 6, "DequantizeLinear": 10}
    assert qdq.activation_dtypes == ("uint8",) and qdq.weight_dtypes == ("int32", "int8")
    assert qdq.quantized_ops["Conv"] == 3 and "on 3 Conv" in qdq.summary()
    assert "qoperator" in detect_form(load_model(files["qoperator"])).kinds
    dynamic = detect_form(load_model(files["dynamic"]))
    assert dynamic.kinds == ("integer-ops",) and dynamic.ops["DynamicQuantizeLinear"] >= 1
    qat = detect_form(load_model(qat_export(rng)))
    assert qat.kinds == ("qdq",) and qat.activation_dtypes == ("int8",)


def test_weight_only_and_half_precision(rng):
    model = conv_model(rng)
    w = model.graph.initializers["w"]
    w.const_value = ir.tensor(w.const_value.numpy().astype(np.float16), name="w")
    w.dtype = ir.DataType.FLOAT16
    assert detect_form(model).kinds == ("float16",)
    assert detect_form(load_model(weight_only(rng))).kinds == ("weight-only",)


def weight_only(rng):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "w_DQ"),
        helper.make_node("MatMul", ["x", "w"], ["y"], "mm"),
    ]
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, size=(4, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w_s"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
