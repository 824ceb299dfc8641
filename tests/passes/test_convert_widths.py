"""ConvertWidths: a requantizing Q → DQ pair where a node reads or writes an activation at another width."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.passes.convert_widths import ConvertWidths
from qcompile.targets.qnn_htp import make_qnn_htp
from tests.helpers import copy, ops, run

LEVELS = {np.uint8: (0, 255), np.uint16: (0, 65535)}


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, inputs: list[str], output: str, name: str | None = None) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name or output))
        return output

    def qdq(self, x: str, dtype, scale: float, zp: int) -> str:
        s = self.const(f"{x}_scale", np.float32(scale))
        z = self.const(f"{x}_zero_point", np.array(zp, dtype))
        self.add("QuantizeLinear", [x, s, z], f"{x}_q")
        return self.add("DequantizeLinear", [f"{x}_q", s, z], f"{x}_dq")

    def model(self, inputs: dict[str, list], output: str) -> ir.Model:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, shape) for k, shape in inputs.items()],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            self.inits,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
        return ir.from_proto(proto)


def _params(dq: ir.Node) -> tuple[float, int, np.dtype]:
    """A Q/DQ node's scale, zero point and integer type."""
    zp = dq.inputs[2].const_value.numpy()
    return float(dq.inputs[1].const_value.numpy()), int(zp), zp.dtype


def _assert_close_on_ort(before: ir.Model, after: ir.Model, feeds: dict[str, np.ndarray], atol: float) -> None:
    want, got = run(before, feeds), run(after, feeds)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize(
    ("src", "src_scale", "src_zp", "dst"),
    [(np.uint16, 1e-4, 30000, np.uint8), (np.uint8, 0.03, 100, np.uint16)],
)
def test_a_relu_reading_the_other_width_gets_a_converted_copy(src, src_scale, src_zp, dst):
    lo, hi = ((q - src_zp) * src_scale for q in LEVELS[src])
    g = _Graph()
    g.add("Relu", [g.qdq("x", src, src_scale, src_zp)], "r", name="relu")
    model = g.model({"x": [1, 64]}, g.qdq("r", dst, hi / LEVELS[dst][1], 0))
    before = copy(model)

    assert ConvertWidths(make_qnn_htp())(model).modified
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    relu = model.graph.node("relu")
    back = relu.inputs[0].producer()
    assert back.op_type == "DequantizeLinear" and back.inputs[0].dtype == ir.DataType.from_numpy(np.dtype(dst))
    q = back.inputs[0].producer()
    assert q.op_type == "QuantizeLinear" and q.inputs[0].name == "x_dq"  # reads the original DequantizeLinear
    scale, zp, dtype = _params(back)
    assert dtype == dst and _params(q) == (scale, zp, dtype)
    # the new (scale, zero point) cover the same real range, to within one of its steps
    new_lo, new_hi = ((level - zp) * scale for level in LEVELS[dst])
    assert abs(new_lo - lo) <= scale and abs(new_hi - hi) <= scale
    assert ops(model)["QuantizeLinear"] == ops(before)["QuantizeLinear"] + 1
    assert not ConvertWidths(make_qnn_htp())(model).modified

    x = np.random.default_rng(0).uniform(lo * 1.1, hi * 1.1, size=(1, 64)).astype(np.float32)
    u8_step = scale if dst is np.uint8 else src_scale
    _assert_close_on_ort(before, model, {"x": x}, atol=u8_step + 1e-6)


def test_an_8_bit_matmul_writing_a_16_bit_tensor_goes_through_uint8():
    g = _Graph()
    a, b = g.qdq("a", np.uint8, 0.02, 128), g.qdq("b", np.uint8, 0.02, 128)
    g.add("MatMul", [a, b], "m", name="mm")
    model = g.model({"a": [2, 3], "b": [3, 4]}, g.qdq("m", np.uint16, 24 / 65535, 32768))
    before = copy(model)

    assert ConvertWidths(make_qnn_htp())(model).modified
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    mm = model.graph.node("mm")
    assert [v.name for v in mm.inputs] == ["a_dq", "b_dq"]  # its 8-bit inputs are untouched
    (q8,) = [u.node for u in mm.outputs[0].uses()]
    assert q8.op_type == "QuantizeLinear" and q8.outputs[0].dtype == ir.DataType.UINT8
    (dq8,) = [u.node for u in q8.outputs[0].uses()]
    assert dq8.op_type == "DequantizeLinear"
    (q16,) = [u.node for u in dq8.outputs[0].uses()]
    assert q16.op_type == "QuantizeLinear" and q16.outputs[0].name == "m_q"  # the original uint16 Q
    assert q16.outputs[0].dtype == ir.DataType.UINT16
    scale, zp, _ = _params(q8)
    lo, hi = (0 - 32768) * 24 / 65535, (65535 - 32768) * 24 / 65535
    assert abs((0 - zp) * scale - lo) <= scale and abs((255 - zp) * scale - hi) <= scale
    assert not ConvertWidths(make_qnn_htp())(model).modified

    rng = np.random.default_rng(1)
    feeds = {"a": rng.uniform(-2, 2, (2, 3)).astype(np.float32), "b": rng.uniform(-2, 2, (3, 4)).astype(np.float32)}
    _assert_close_on_ort(before, model, feeds, atol=scale + 1e-6)


def test_agreeing_widths_are_left_alone():
    g = _Graph()
    g.add("Relu", [g.qdq("x", np.uint8, 0.02, 128)], "r", name="relu")
    eight = g.model({"x": [1, 8]}, g.qdq("r", np.uint8, 0.01, 0))
    # a 16-bit MatMul with a constant weight runs 16-bit: nothing to convert
    g = _Graph()
    w = ["w", g.const("w_scale", np.float32(0.01)), g.const("w_zero_point", np.int8(0))]
    g.const("w", np.arange(-6, 6, dtype=np.int8).reshape(3, 4))
    g.add("DequantizeLinear", w, "w_dq")
    g.add("MatMul", [g.qdq("a", np.uint16, 1e-4, 32768), "w_dq"], "m", name="mm")
    sixteen = g.model({"a": [2, 3]}, g.qdq("m", np.uint16, 1e-3, 32768))
    for model in (eight, sixteen):
        before = ir.to_proto(model).SerializeToString()
        assert not ConvertWidths(make_qnn_htp())(model).modified
        assert ir.to_proto(model).SerializeToString() == before


def test_a_constant_read_at_the_other_width_is_stored_again_at_the_nodes_width():
    """Mul by a uint16 constant in a node that writes uint8: the constant gets uint8 data and a DQ of
    its own (no Q → DQ pair on static data), holding the same value to within one uint8 step."""
    g = _Graph()
    value, c_scale, c_zp = 0.37, 1.0 / 65535, 0
    c = g.const("c_data", np.array([round(value / c_scale)], np.uint16))
    s = g.const("c_scale", np.float32(c_scale))
    z = g.const("c_zero_point", np.array(c_zp, np.uint16))
    g.add("DequantizeLinear", [c, s, z], "c_dq")
    g.add("Mul", [g.qdq("x", np.uint8, 1 / 64, 128), "c_dq"], "m", name="mul")
    model = g.model({"x": [1, 8]}, g.qdq("m", np.uint8, 1 / 128, 128))
    before = copy(model)

    assert ConvertWidths(make_qnn_htp())(model).modified
    dq = model.graph.node("mul").inputs[1].producer()
    assert dq.op_type == "DequantizeLinear" and dq.inputs[0].is_initializer()
    assert dq.inputs[0].dtype == ir.DataType.UINT8
    scale, zp, _ = _params(dq)
    stored = float((dq.inputs[0].const_value.numpy().astype(np.float64)[0] - zp) * scale)
    assert abs(stored - value) <= scale
    dangling = [n for n in model.graph if not n.outputs[0].uses() and not n.outputs[0].is_graph_output()]
    assert dangling == []  # the constant's old DQ is gone (an NPU would run it alone, in float)
    assert "QuantizeLinear" not in {
        n.op_type for n in model.graph if n.inputs and n.inputs[0] is not None and n.inputs[0].name == "c_dq"
    }
    x = np.linspace(-1.5, 1.5, 8, dtype=np.float32)[None]
    _assert_close_on_ort(before, model, {"x": x}, atol=1 / 128 + 1.5 * scale)
