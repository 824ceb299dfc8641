"""ORT sessions (qcompile.runtime): a QDQ model that stands in for another runtime runs unfused on a
CPU whose u8s8 kernels saturate, and computes exactly what its Q/DQ say."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
import qcompile.runtime
from qcompile.card import render_markdown
from qcompile.cpu import CpuInfo
from qcompile.runtime import SessionSource, make_session, run_session, unfused_stand_in
from tests.support.quant_models import conv_model, feeds

SATURATING = CpuInfo("x86_64", "test", frozenset({"avx2"}))
VNNI = CpuInfo("x86_64", "test", frozenset({"avx2", "avx512_vnni"}))


def _qdq_matmul(w_q: np.ndarray) -> onnx.ModelProto:
    """x → Q/DQ (uint8, scale 1/255) → MatMul with int8 weights (scale 1/127) → Q/DQ (uint8, scale 1/8)."""
    inits = {
        "w_q": w_q,
        "xs": np.array(1 / 255, np.float32),
        "xz": np.array(0, np.uint8),
        "ws": np.array(1 / 127, np.float32),
        "ys": np.array(1 / 8, np.float32),
        "yz": np.array(0, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "ws"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["h"]),
        helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_an_unfused_session_computes_the_qdq_model_as_written(rng):
    """Inputs at 255 steps times weights at ±127: the pairs a saturating u8s8 kernel would clip."""
    w_q = np.where(rng.random((64, 8)) < 0.8, 127, -127).astype(np.int8)
    proto = _qdq_matmul(w_q)
    x = {"x": np.ones((1, 64), np.float32)}
    want = np.clip(np.rint((x["x"] @ (w_q.astype(np.float64) / 127)) * 8), 0, 255) / 8
    source = SessionSource(proto.SerializeToString(), unfused_qdq=True)
    np.testing.assert_allclose(run_session(make_session(source), x)["y"], want, atol=1e-6)
    with tempfile.TemporaryDirectory() as tmp:
        for unfused, fused_ops in ((True, set()), (False, {"QLinearMatMul", "MatMulIntegerToFloat"})):
            path = Path(tmp) / f"opt{unfused}.onnx"
            make_session(SessionSource(proto.SerializeToString(), unfused_qdq=unfused), optimized_model_path=path)
            ops = {n.op_type for n in onnx.load(str(path)).graph.node}
            assert bool(ops & {"QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger"}) == bool(fused_ops), ops


@pytest.mark.parametrize("cpu,ort_is_runtime,unfused", [
    (SATURATING, False, True), (SATURATING, True, False), (VNNI, False, False),
])  # fmt: skip
def test_only_a_stand_in_on_a_saturating_cpu_runs_unfused(monkeypatch, cpu, ort_is_runtime, unfused):
    monkeypatch.setattr(qcompile.runtime, "cpu_info", lambda: cpu)
    assert unfused_stand_in(ort_is_runtime) is unfused


@pytest.mark.parametrize("cpu", [SATURATING, VNNI])
def test_the_card_says_when_the_qdq_model_ran_unfused(monkeypatch, rng, cpu):
    monkeypatch.setattr(qcompile.runtime, "cpu_info", lambda: cpu)
    model: ir.Model = conv_model(rng)
    result = qcompile.compile(model, "tflite", feeds(rng, 12), measure_latency=False)
    saturates = cpu is SATURATING
    assert ("qdq_unfused" in result.card["deployment"]) is saturates
    assert ("run unfused (DequantizeLinear → float op → QuantizeLinear)" in render_markdown(result.card)) is saturates
    assert "qdq_unfused" not in qcompile.compile(model, "ort-cpu", feeds(rng, 12), measure_latency=False).card.get(
        "deployment", {}
    )
