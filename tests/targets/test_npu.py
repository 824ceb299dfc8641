"""NPU fallbacks (targets/npu.py) read with QNN HTP's table: one hand-made QDQ model per rule."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.targets.npu import fallbacks, node_macs, npu_share, quantized_casts
from qcompile.targets.qnn_htp import RULES, make_qnn_htp
from tests.helpers import copy, run

FLOAT = TensorProto.FLOAT


class _Graph:
    """Nodes and initializers of a tiny QDQ graph, built with onnx.helper."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name or output, **attrs))
        return output

    def qdq(self, x: str, dtype, scale: float = 0.02, zp: int = 0) -> str:
        """x → QuantizeLinear(dtype) → DequantizeLinear; returns the DQ's output."""
        s = self.const(f"{x}_scale", np.float32(scale))
        z = self.const(f"{x}_zero_point", np.array(zp, dtype))
        self.add("QuantizeLinear", [x, s, z], f"{x}_q")
        return self.add("DequantizeLinear", [f"{x}_q", s, z], f"{x}_dq")

    def const_dq(self, name: str, data: np.ndarray, scale, zp: np.ndarray | None = None, axis: int | None = None):
        """A constant quantized tensor read through a DequantizeLinear; returns the DQ's output."""
        inputs = [self.const(name, data), self.const(f"{name}_scale", np.asarray(scale, np.float32))]
        if zp is not None:
            inputs.append(self.const(f"{name}_zero_point", zp))
        attrs = {"axis": axis} if axis is not None else {}
        return self.add("DequantizeLinear", inputs, f"{name}_dq", **attrs)

    def model(self, inputs: dict[str, list], outputs: list[str], input_types: dict[str, int] | None = None):
        types = input_types or {}
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(k, types.get(k, FLOAT), shape) for k, shape in inputs.items()],
            [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs],
            self.inits,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
        return ir.from_proto(proto)


def _conv_unit(
    *,
    direct_input: bool = False,
    quantize_output: bool = True,
    w_dtype=np.int8,
    w_zp: int = 0,
) -> ir.Model:
    """x → Q/DQ(uint8) → Conv(int8 weight, int32 bias) → Relu → Q/DQ(uint8) → y, with one thing changed."""
    rng = np.random.default_rng(0)
    g = _Graph()
    x = "x" if direct_input else g.qdq("x", np.uint8, 1 / 64, 128)
    w_scale = np.array([0.01, 0.02, 0.03], np.float32)
    info = np.iinfo(w_dtype)
    w = rng.integers(max(info.min, -100), min(info.max, 100), size=(3, 2, 3, 3)).astype(w_dtype)
    w_dq = g.const_dq("w", w, w_scale, np.full(3, w_zp, w_dtype), axis=0)
    b_dq = g.const_dq("b", np.array([5, -7, 11], np.int32), w_scale / 64, axis=0)
    g.add("Conv", [x, w_dq, b_dq], "c", name="conv")
    if quantize_output:
        g.add("Relu", ["c"], "r", name="relu")
        out = g.qdq("r", np.uint8, 1 / 32, 0)
    else:
        out = "c"
    return g.model({"x": [1, 2, 5, 5]}, [out])


def _rules(found, node: str) -> list[str]:
    """The rules `node` breaks; each fallback's text names the node."""
    mine = [f for f in found if f.node == node]
    for f in mine:
        assert f"{node!r}" in f.text(), f.text()
    return sorted(f.rule for f in mine)


@pytest.fixture
def target():
    return make_qnn_htp()


def test_a_clean_conv_relu_unit_has_no_fallbacks(target):
    assert fallbacks(_conv_unit(), target, RULES) == []


def test_op_outside_the_table(target):
    g = _Graph()
    g.add("Sin", [g.qdq("x", np.uint8, 1 / 64, 128)], "s", name="sin")
    found = fallbacks(g.model({"x": [1, 4]}, [g.qdq("s", np.uint8, 1 / 128, 128)]), target, RULES)
    assert _rules(found, "sin") == ["op-table"]
    assert [f.node for f in found] == ["sin"]


def test_control_flow(target):
    g = _Graph()
    x = g.qdq("x", np.uint8, 1 / 64, 128)

    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("Identity", [x], [f"{name}_out"], f"{name}_id")
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_out", FLOAT, [1, 4])])

    g.add("If", ["cond"], "branch", name="if", then_branch=branch("then"), else_branch=branch("else"))
    model = g.model({"x": [1, 4], "cond": []}, [g.qdq("branch", np.uint8, 1 / 64, 128)], {"cond": TensorProto.BOOL})
    assert _rules(fallbacks(model, target, RULES), "if") == ["no-control-flow"]


def test_dynamic_input_shape(target):
    g = _Graph()
    g.add("Relu", [g.qdq("x", np.uint8, 1 / 64, 128)], "r", name="relu")
    found = fallbacks(g.model({"x": ["N", 4]}, [g.qdq("r", np.uint8, 1 / 64, 0)]), target, RULES)
    assert [(f.node, f.rule) for f in found] == [("<inputs>", "static-shapes")]
    assert "'<inputs>'" in found[0].text() and "'x'" in found[0].text()


def test_float_input_and_float_output(target):
    found = fallbacks(_conv_unit(direct_input=True), target, RULES)
    assert _rules(found, "conv") == ["quantized-inputs"]
    assert "'x'" in found[0].text()
    found = fallbacks(_conv_unit(quantize_output=False), target, RULES)
    assert _rules(found, "conv") == ["quantized-outputs"]
    assert "'c'" in found[0].text()


def test_int16_activations(target):
    g = _Graph()
    g.add("Sigmoid", [g.qdq("x", np.int16, 1e-3, 0)], "s", name="sigmoid")
    found = fallbacks(g.model({"x": [1, 4]}, [g.qdq("s", np.int16, 1 / 32768, 0)]), target, RULES)
    assert _rules(found, "sigmoid") == ["activation-dtype"]
    assert "int16" in found[0].text()


def test_signed_weight_with_a_zero_point(target):
    found = fallbacks(_conv_unit(w_zp=3), target, RULES)
    assert _rules(found, "conv") == ["weight-zero-point"]


@pytest.mark.parametrize("w_dtype", [np.uint16, np.int16])
def test_16_bit_weight_with_8_bit_activations(target, w_dtype):
    found = fallbacks(_conv_unit(w_dtype=w_dtype), target, RULES)
    rules = _rules(found, "conv")
    assert rules and set(rules) == {"weight-dtype"}


def test_op_without_a_16_bit_kernel(target):
    g = _Graph()
    slope = g.const_dq("slope", np.array([[10], [200]], np.uint8), 0.01, np.array(0, np.uint8))
    g.add("PRelu", [g.qdq("x", np.uint16, 1e-4, 32768), slope], "p", name="prelu")
    found = fallbacks(g.model({"x": [1, 2, 4]}, [g.qdq("p", np.uint16, 1e-4, 32768)]), target, RULES)
    assert _rules(found, "prelu") == ["16-bit-kernel"]


def test_matmul_of_two_16_bit_activations(target):
    g = _Graph()
    g.add("MatMul", [g.qdq("a", np.uint16, 1e-4, 32768), g.qdq("b", np.uint16, 1e-4, 32768)], "m", name="mm")
    model = g.model({"a": [2, 3], "b": [3, 4]}, [g.qdq("m", np.uint16, 1e-3, 32768)])
    assert "not-both-16-bit" in _rules(fallbacks(model, target, RULES), "mm")
    # one 16-bit activation times a constant int8 weight runs on the NPU
    g = _Graph()
    w = g.const_dq("w", np.arange(-6, 6, dtype=np.int8).reshape(3, 4), 0.01, np.array(0, np.int8))
    g.add("MatMul", [g.qdq("a", np.uint16, 1e-4, 32768), w], "m", name="mm")
    model = g.model({"a": [2, 3]}, [g.qdq("m", np.uint16, 1e-3, 32768)])
    assert fallbacks(model, target, RULES) == []


@pytest.mark.parametrize(("axis", "want"), [(1, ["last-axis"]), (2, []), (-1, [])])
def test_softmax_axis(target, axis, want):
    g = _Graph()
    g.add("Softmax", [g.qdq("x", np.uint8, 1 / 16, 128)], "s", name="softmax", axis=axis)
    found = fallbacks(g.model({"x": [1, 3, 4]}, [g.qdq("s", np.uint8, 1 / 256, 0)]), target, RULES)
    assert _rules(found, "softmax") == want
    assert len(found) == len(want)


@pytest.mark.parametrize(("gamma_dtype", "want"), [(np.int8, ["unsigned-weight"]), (np.uint8, [])])
def test_layer_norm_gamma_must_be_unsigned(target, gamma_dtype, want):
    g = _Graph()
    gamma = g.const_dq("gamma", np.array([10, 20, 30, 40], gamma_dtype), 0.05, np.array(0, gamma_dtype))
    g.add("LayerNormalization", [g.qdq("x", np.uint8, 1 / 16, 128), gamma], "n", name="ln")
    found = fallbacks(g.model({"x": [1, 3, 4]}, [g.qdq("n", np.uint8, 1 / 16, 128)]), target, RULES)
    assert _rules(found, "ln") == want
    assert len(found) == len(want)


def test_npu_share_counts_nodes_and_macs(target):
    """conv1 → Relu (on the NPU) → conv2 writing a float graph output (falls back)."""
    g = _Graph()
    x = g.qdq("x", np.uint8, 1 / 64, 128)
    w1 = g.const_dq("w1", np.ones((4, 2, 3, 3), np.int8), np.full(4, 0.01), np.zeros(4, np.int8), axis=0)
    g.add("Conv", [x, w1], "c1", name="conv1")
    g.add("Relu", ["c1"], "r", name="relu")
    w2 = g.const_dq("w2", np.ones((5, 4, 1, 1), np.int8), np.full(5, 0.01), np.zeros(5, np.int8), axis=0)
    g.add("Conv", [g.qdq("r", np.uint8, 1 / 32, 0), w2], "y", name="conv2")
    model = g.model({"x": [1, 2, 6, 6]}, ["y"])
    found = fallbacks(model, target, RULES)
    assert [(f.node, f.rule) for f in found] == [("conv2", "quantized-outputs")]
    share = npu_share(model, found)
    proto = ir.to_proto(model)
    counted = [n for n in proto.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    assert share["nodes"] == len(counted) == 3
    assert share["nodes_on_npu"] == len(counted) - 1
    macs1 = (1 * 4 * 4 * 4) * 2 * 3 * 3  # out [1, 4, 4, 4], C_in 2, 3×3 kernel
    macs2 = (1 * 5 * 4 * 4) * 4 * 1 * 1
    assert share["mac_share"] == pytest.approx(macs1 / (macs1 + macs2), abs=1e-4)
    assert share["fallback_nodes"] == [found[0].text()]


def test_node_macs_of_a_grouped_strided_conv():
    n, c_in, h, w, c_out, group, k, stride, pad = 1, 4, 7, 9, 6, 2, 3, 2, 1
    g = _Graph()
    g.const("w", np.ones((c_out, c_in // group, k, k), np.float32))
    g.add("Conv", ["x", "w"], "y", name="conv", group=group, strides=[stride] * 2, pads=[pad] * 4)
    model = g.model({"x": [n, c_in, h, w]}, ["y"])
    out = run(model, {"x": np.zeros((n, c_in, h, w), np.float32)})["y"].shape
    assert out == (n, c_out, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    assert node_macs(model.graph.node("conv")) == math.prod(out) * (c_in // group) * k * k


def _cast_model(scale: float) -> ir.Model:
    g = _Graph()
    g.add("Cast", ["mask"], "mask_f", name="cast", to=FLOAT)
    return g.model({"mask": [2, 8]}, [g.qdq("mask_f", np.uint8, scale, 0)], {"mask": TensorProto.INT64})


def test_cast_into_a_small_uint8_quantization_is_rewritten():
    model = _cast_model(1 / 255)
    before = copy(model)
    assert quantized_casts(model) == ["cast"]
    cast = model.graph.node("cast")
    assert cast.attributes["to"].as_int() == ir.DataType.UINT8.value
    readers = [u.node for u in cast.outputs[0].uses()]
    assert [r.op_type for r in readers] == ["DequantizeLinear"]
    assert [u.node.op_type for u in readers[0].outputs[0].uses()] == ["QuantizeLinear"]
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    mask = np.random.default_rng(0).integers(0, 2, size=(2, 8)).astype(np.int64)
    want, got = run(before, {"mask": mask}), run(model, {"mask": mask})
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(got["mask_f_dq"], mask.astype(np.float32))


def test_cast_into_a_wide_quantization_is_left_alone():
    model = _cast_model(2.0)
    assert quantized_casts(model) == []
    cast = model.graph.node("cast")
    assert cast.attributes["to"].as_int() == FLOAT
    assert [u.node.op_type for u in cast.outputs[0].uses()] == ["QuantizeLinear"]


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match=r"precision 'a4w4' not in a8w8, a16w8"):
        make_qnn_htp(precision="a4w4")
    with pytest.raises(ValueError, match=r"no option\(s\) \['bogus'\]"):
        make_qnn_htp(bogus=1)


def test_check_npu_lists_every_node_and_the_way_out(target):
    """The legality error names each node with its rule and says how to write the model anyway."""
    from qcompile.targets.base import LegalityError
    from qcompile.targets.npu import check_npu

    g = _Graph()
    g.add("Sin", [g.qdq("x", np.uint8, 1 / 64, 128)], "s", name="sin")
    model = g.model({"x": [1, 4]}, [g.qdq("s", np.uint8, 1 / 128, 128)])
    with pytest.raises(LegalityError) as e:
        check_npu(model, target, RULES, allow_fallback=False)
    assert "node 'sin' (Sin): rule op-table" in str(e.value) and "--allow-cpu-fallback" in str(e.value)
    summary = check_npu(model, target, RULES, allow_fallback=True)
    assert summary["npu"]["fallback_nodes"] and summary["problems"][0]["fails"] is False
