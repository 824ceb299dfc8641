"""The second NPU, `intel-npu`, is a capability table only: its legality rules on tiny models, and the
sample compiled for it (measured on ORT's CPU: no OpenVINO runtime beside ORT 1.32 here)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import qcompile
from qcompile.errors import QCompileError
from qcompile.targets import get_target
from qcompile.targets.base import LegalityError
from qcompile.targets.intel_npu import RULES
from qcompile.targets.npu import fallbacks
from tests.helpers import SAMPLES

CALIB = SAMPLES / "digits_calib.npz"


def _compile(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(model, "intel-npu", calibration=CALIB, measure_latency=False, **kwargs)


def _model(op: str, attrs: dict | None = None) -> onnx.ModelProto:
    """input [N,1,8,8] → Conv → `op` → Conv."""
    rng = np.random.default_rng(1)
    nodes = [
        oh.make_node("Conv", ["input", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node(op, ["a"], ["b"], name="mid", **(attrs or {})),
        oh.make_node("Conv", ["b", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [
        nh.from_array((rng.normal(size=(4, 1, 3, 3)) * 0.3).astype(np.float32), "w"),
        nh.from_array((rng.normal(size=(4, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_the_sample_runs_whole_on_the_intel_npu_by_its_table():
    result = _compile(SAMPLES / "digits_cnn.onnx")
    dep = result.card["deployment"]
    assert dep["npu"]["node_share"] == 1.0 and dep["npu"]["fallback_nodes"] == []
    assert dep["device"] == "NPU" and "not run on an NPU" in dep["runtime"]
    assert result.card["fidelity"]["outputs"][0]["sqnr_db"] > 25
    assert all(s.dtype in ("uint8", "int8", "int32") for s in result.plan.tensors.values())


def test_an_op_in_neither_table_fails_before_calibration_naming_node_and_rule():
    with pytest.raises(LegalityError, match=r"node 'mid' \(Sin\): rule op-table: Sin is not in intel-npu's op table"):
        _compile(_model("Sin"))


def test_a_float_op_runs_on_the_npu_in_float16():
    """Tanh has no integer rule here but a float16 kernel: it stays float and on the NPU."""
    result = _compile(_model("Tanh"))
    assert result.plan.nodes["mid"].precision == "float"
    assert result.card["deployment"]["npu"]["node_share"] == 1.0


def test_sixteen_bit_activations_break_the_activation_dtype_rule():
    text = """
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[1,4] x) => (float[1,4] y) <uint16 s16_zp = {0}, float s = {0.01}, uint8 zp = {0}> {
        xq = QuantizeLinear(x, s, s16_zp)
        xd = DequantizeLinear(xq, s, s16_zp)
        r = Relu(xd)
        rq = QuantizeLinear(r, s, zp)
        y = DequantizeLinear(rq, s, zp)
    }
    """
    model = ir.from_proto(onnx.shape_inference.infer_shapes(onnx.parser.parse_model(text)))
    found = fallbacks(model, get_target("intel-npu"), RULES)
    assert [f.rule for f in found] == ["activation-dtype", "16-bit-kernel"]  # and no 16-bit Relu either
    assert "uint16" in found[0].text() and "uint8, int8" in found[0].text()


def test_unknown_option_is_named():
    with pytest.raises(QCompileError, match=r"intel-npu takes no option\(s\) \['precision'\]"):
        get_target("intel-npu", precision="a16w8")
