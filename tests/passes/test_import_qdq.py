import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

from qcompile.errors import QCompileError
from qcompile.passes.import_qdq import import_qdq, imported_decisions
from qcompile.targets import get_target
from tests.helpers import run
from tests.support.quantized_files import ort_static, qat_export, qdq_params


def test_an_ort_qdq_file_becomes_its_float_graph_and_plan(tmp_path, rng):
    _, path = ort_static(tmp_path, rng)
    proto = onnx.load(path)
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    file_params = qdq_params(proto)
    model = ir.from_proto(proto)
    plan = import_qdq(model)
    assert not [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # ORT names weights `w_quantized`: the float one is `w`
    assert set(plan.tensors) == {"w", "b", "fw", "fb", "x", "r", "p", "f", "y", "s"}  # outputs keep their names
    for float_name, file_name in (("w", "w_quantized"), ("fw", "fw_quantized"), ("b", "b_quantized")):
        spec = plan.tensors[float_name]
        scale, zp = file_params[file_name]
        np.testing.assert_array_equal(spec.scale_array(), scale)
        np.testing.assert_array_equal(spec.zero_point_array(), zp)
        # the float weight is exactly what DequantizeLinear computes: (q − z)·s in float32
        q = stored[file_name].astype(np.int64)
        shape = [1] * q.ndim
        shape[spec.axis] = -1
        want = ((q - zp.astype(np.int64).reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        np.testing.assert_array_equal(model.graph.initializers[float_name].const_value.numpy(), want)
    for name in ("x", "r", "p", "f"):
        np.testing.assert_array_equal(plan.tensors[name].scale_array(), file_params[name][0])
    assert (
        plan.tensors["w"].dtype == "int8" and plan.tensors["x"].dtype == "uint8" and plan.tensors["b"].dtype == "int32"
    )


def test_a_qat_export_imports_its_fake_quantized_weights(rng):
    proto = qat_export(rng)
    model = ir.from_proto(proto)
    plan = import_qdq(model)
    assert set(plan.tensors) == {"x", "w", "h"}
    assert plan.tensors["w"].axis == 0 and plan.tensors["w"].symmetric
    x = rng.normal(size=(4, 16)).astype(np.float32)
    w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w"))
    np.testing.assert_allclose(run(model, {"x": x})["y"], np.maximum(x @ w.T, 0), rtol=1e-5, atol=1e-5)
    decisions = imported_decisions(model, plan, get_target("ort-cpu"))
    assert decisions["fc"].precision == "int8" and decisions["fc"].reason == "imported: quantized in the file"


def _edited(rng, edit):
    proto = qat_export(rng)
    edit(proto)
    return ir.from_proto(proto)


def test_a_requantizing_pair_is_refused(rng):
    def other_scale(proto):
        next(n for n in proto.graph.node if n.name == "h_DQ").input[1] = "x_s"

    with pytest.raises(QCompileError, match="QuantizeLinear 'h_Q' and DequantizeLinear 'h_DQ' use different scales"):
        import_qdq(_edited(rng, other_scale))


def test_an_integer_output_is_refused(rng):
    def int_output(proto):
        relu = next(n for n in proto.graph.node if n.name == "relu")
        relu.input[0] = "h"
        proto.graph.output[0].name = "h_q"

    with pytest.raises(QCompileError, match="QuantizeLinear 'h_Q': its integer output goes to the graph's outputs"):
        import_qdq(_edited(rng, int_output))


def test_a_scale_computed_at_run_time_is_refused(rng):
    def runtime_scale(proto):
        proto.graph.node.insert(0, onnx.helper.make_node("Abs", ["x_s"], ["x_s_abs"], "abs"))
        for n in proto.graph.node:
            if n.name in ("x_Q", "x_DQ"):
                n.input[1] = "x_s_abs"

    with pytest.raises(QCompileError, match="QuantizeLinear 'x_Q': its scale is computed at run time, not stored"):
        import_qdq(_edited(rng, runtime_scale))


def test_one_tensor_quantized_twice_with_different_scales_is_refused(rng):
    def twice(proto):
        proto.graph.node.extend(
            [
                onnx.helper.make_node("QuantizeLinear", ["x", "h_s", "h_z"], ["x_q2"], "x_Q2"),
                onnx.helper.make_node("DequantizeLinear", ["x_q2", "h_s", "h_z"], ["x_dq2"], "x_DQ2"),
                onnx.helper.make_node("Relu", ["x_dq2"], ["x_relu"], "relu2"),
            ]
        )
        proto.graph.output.append(onnx.helper.make_tensor_value_info("x_relu", onnx.TensorProto.FLOAT, None))

    with pytest.raises(QCompileError, match="tensor 'x' is quantized twice in the file, with different scales"):
        import_qdq(_edited(rng, twice))


def test_quantized_inputs_are_refused(rng):
    def int8_input(proto):
        proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT8
        del proto.graph.node[0]  # x_Q: the model now reads int8 x through x_DQ
        next(n for n in proto.graph.node if n.name == "x_DQ").input[0] = "x"

    with pytest.raises(QCompileError, match="input 'x' is already int8: qcompile takes float inputs"):
        import_qdq(_edited(rng, int8_input))


def test_a_zero_point_computed_at_run_time_is_refused(rng):
    def runtime_zp(proto):
        proto.graph.node.insert(0, onnx.helper.make_node("Identity", ["x_z"], ["x_z_copy"], "copy"))
        for n in proto.graph.node:
            if n.name in ("x_Q", "x_DQ"):
                n.input[2] = "x_z_copy"

    with pytest.raises(QCompileError, match="QuantizeLinear 'x_Q': its zero point is computed at run time"):
        import_qdq(_edited(rng, runtime_zp))


def test_a_float8_pair_is_refused(rng):
    def float8(proto):
        for i, init in enumerate(proto.graph.initializer):
            if init.name == "h_z":
                proto.graph.initializer[i].CopyFrom(onnx.helper.make_tensor("h_z", TensorProto.FLOAT8E4M3FN, [], [0.0]))

    with pytest.raises(QCompileError, match="QuantizeLinear 'h_Q' uses float8e4m3fn, which qcompile does not quantize"):
        import_qdq(_edited(rng, float8))


def test_blocked_weights_are_refused(rng):
    def blocked(proto):
        w = next(i for i in proto.graph.initializer if i.name == "w")
        q = np.clip(np.round(numpy_helper.to_array(w) / 0.02), -127, 127).astype(np.int8)
        proto.graph.initializer.extend(
            [numpy_helper.from_array(q, "w_q8"), numpy_helper.from_array(np.full((8, 2), 0.02, np.float32), "w_bs")]
        )
        proto.graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", ["w_q8", "w_bs"], ["w_blk"], "w_DQb",
                                                         axis=1, block_size=8))  # fmt: skip
        next(n for n in proto.graph.node if n.name == "fc").input[1] = "w_blk"

    with pytest.raises(QCompileError, match="DequantizeLinear 'w_DQb': blocked weights are not imported yet"):
        import_qdq(_edited(rng, blocked))


def test_integers_made_at_run_time_are_refused(rng):
    def cast_in(proto):
        proto.graph.node.insert(0, onnx.helper.make_node("Cast", ["x"], ["x_i8"], "to_int8", to=TensorProto.INT8))
        next(n for n in proto.graph.node if n.name == "x_DQ").input[0] = "x_i8"

    with pytest.raises(QCompileError, match="DequantizeLinear 'x_DQ' reads a value computed at run time"):
        import_qdq(_edited(rng, cast_in))
