"""End to end on Qualcomm's QNN HTP backend (the `onnxruntime-qnn` wheel's x86-64 simulator), CPU
fallback disabled: the sample in a8w8 and a16w8, the context binary, the legality error before any
file is written, --allow-cpu-fallback with the NPU's share, and the selective policy meeting a budget
with a mixed 8/16-bit plan that stays entirely on the NPU.

Deselect with `-m "not qnn"` where the wheel cannot be installed.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import qcompile
from qcompile.cli import main
from qcompile.errors import QCompileError
from qcompile.runtime import make_session
from qcompile.targets.base import LegalityError
from qcompile.targets.qnn_run import qnn_available, qnn_session
from tests.helpers import SAMPLES

pytestmark = [pytest.mark.qnn, pytest.mark.skipif(qnn_available() is not None, reason=str(qnn_available()))]

MODEL, CALIB, TEST = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_calib.npz", SAMPLES / "digits_test.npz"


def _compile(model=MODEL, evaluation=TEST, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(
            model, "qnn-htp", calibration=CALIB, evaluation=evaluation, measure_latency=False, **kwargs
        )


def _sqnr(result) -> float:
    return result.card["fidelity"]["outputs"][0]["sqnr_db"]


@pytest.fixture(scope="module")
def a8w8():
    return _compile()


@pytest.fixture(scope="module")
def a16w8():
    return _compile(target_options={"precision": "a16w8"})


def _digits(n: int = 40) -> np.ndarray:
    return np.load(TEST)["input"][:n]


def test_sample_runs_whole_on_the_htp_and_matches_its_qdq_model_on_ort(a8w8, tmp_path):
    dep = a8w8.card["deployment"]
    assert dep["npu"]["node_share"] == 1.0 and dep["npu"]["mac_share"] == 1.0
    assert dep["float_tensors"] == [] and dep["ep_nodes"]["taken"] == dep["ep_nodes"]["of"]
    assert "disabled" in dep["runtime"] and dep["provider_options"]["soc_model"] == "57"
    assert not [v for v in a8w8.card["verdict"] if v["fails"]]
    # the written file, on a fresh HTP session of our own, against the same file on ORT's CPU kernels
    files = a8w8.save(tmp_path)
    path = next(p for p in files.values() if str(p).endswith(".qnn-htp.onnx"))
    htp, cpu = qnn_session(path, dep["provider_options"]), make_session(path, optimize=False)
    step = float(
        nh.to_array(next(t for t in onnx.load(path).graph.initializer if t.name.endswith("_scale"))).ravel()[0]
    )
    for x in _digits(8):
        got = htp.run(None, {"input": x[None]})[0]
        want = cpu.run(None, {"input": x[None]})[0]
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= 4 * max(step, dep["runtimes_vs_qdq"]["qnn_htp"]["logits"]["max_abs_diff"])
    assert dep["runtimes_vs_qdq"]["qnn_htp"]["logits"]["max_lsb"] <= 3  # HTP rounds a layer or two differently


def test_a16w8_is_at_least_as_faithful_as_a8w8_on_the_htp(a8w8, a16w8):
    assert all(s.dtype in ("uint16", "int8", "int32") for s in a16w8.plan.tensors.values())
    assert any(s.dtype == "uint16" for s in a16w8.plan.tensors.values())
    assert a16w8.card["deployment"]["npu"]["node_share"] == 1.0
    assert _sqnr(a16w8) >= _sqnr(a8w8)


def test_context_binary_loads_on_the_htp_and_gives_the_same_outputs(tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            ["compile", str(MODEL), "--target", "qnn-htp", "--qnn-context", "--calib", str(CALIB)]
            + ["--eval", str(TEST), "--no-latency", "-o", str(out)]
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    ctx = out / "digits_cnn.qnn_ctx.onnx"
    nodes = onnx.load(ctx).graph.node
    assert [n.op_type for n in nodes] == ["EPContext"] and nodes[0].domain == "com.microsoft"
    assert card["deployment"]["runtimes_vs_qdq"]["qnn_context_vs_htp"]["logits"]["max_abs_diff"] == 0.0
    htp = qnn_session(ctx, card["deployment"]["provider_options"])
    qdq = qnn_session(out / "digits_cnn.qnn-htp.onnx", card["deployment"]["provider_options"])
    x = _digits(4)
    for i in range(len(x)):
        assert np.array_equal(htp.run(None, {"input": x[i : i + 1]})[0], qdq.run(None, {"input": x[i : i + 1]})[0])


def _with_sin(tmp_path, last: bool = False):
    """A Conv, a Sin (not in the HTP's table), and a Conv after it unless the Sin is `last`."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.normal(size=(4, 1, 3, 3)) * 0.3).astype(np.float32), "w")]
    nodes = [oh.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    nodes.append(oh.make_node("Sin", ["c"], ["y" if last else "s"], name="sin"))
    if not last:
        inits.append(nh.from_array((rng.normal(size=(4, 4, 3, 3)) * 0.3).astype(np.float32), "w2"))
        nodes.append(oh.make_node("Conv", ["s", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    path = tmp_path / ("sin_last.onnx" if last else "sin.onnx")
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_an_op_the_htp_lacks_fails_before_calibration_naming_node_and_rule(tmp_path):
    with pytest.raises(LegalityError) as e:
        _compile(_with_sin(tmp_path), evaluation=None)
    text = str(e.value)
    assert "node 'sin' (Sin): rule op-table: Sin is not in qnn-htp's op table" in text
    assert "supported ops:" in text and "--allow-cpu-fallback" in text
    out = tmp_path / "out"
    code = main(["compile", str(_with_sin(tmp_path)), "--target", "qnn-htp", "--calib", str(CALIB), "-o", str(out)])
    assert code != 0 and not out.exists()


def test_allow_cpu_fallback_writes_the_model_and_reports_the_npu_share(tmp_path):
    result = _compile(_with_sin(tmp_path), target_options={"allow_cpu_fallback": True})
    npu = result.card["deployment"]["npu"]
    assert (npu["nodes_on_npu"], npu["nodes"]) == (2, 3)
    assert npu["mac_share"] == 1.0  # both Convs' MACs are on the NPU
    assert any("rule op-table" in f for f in npu["fallback_nodes"])
    warned = [v for v in result.card["verdict"] if "fall back to the CPU" in v["problem"]]
    assert warned and not warned[0]["fails"]
    assert result.card["fidelity"]["outputs"][0]["sqnr_db"] > 20


def test_float_tensors_inside_the_qnn_graph_are_reported(tmp_path):
    """The simulator runs a float Sin on the HTP itself; a phone's HTP without float units would not."""
    result = _compile(_with_sin(tmp_path, last=True), target_options={"allow_cpu_fallback": True})
    dep = result.card["deployment"]
    assert "sin" in dep["float_tensors"] or any("sin" in t for t in dep["float_tensors"])
    assert any("inside the QNN graph are float" in v["problem"] for v in result.card["verdict"])


def test_selective_meets_a_budget_between_a8w8_and_a16w8_with_every_node_on_the_npu(a8w8, a16w8):
    low, high = _sqnr(a8w8), _sqnr(a16w8)
    assert high > low + 0.5  # else there is no budget between them to meet
    floor = low + (high - low) / 4  # the search keeps a margin above it on its own samples
    result = _compile(policy="selective", metric="sqnr", floor=floor)
    assert result.card["budget"]["met"] and _sqnr(result) >= floor
    precisions = {d.precision for d in result.plan.nodes.values()}
    assert precisions == {"int8", "int16"}  # mixed, and nothing in float
    dep = result.card["deployment"]
    assert dep["npu"]["node_share"] == 1.0 and dep["float_tensors"] == []
    assert result.card["search"]["on_target"]["runtime"] == "qnn-htp"


def test_unavailable_backend_is_named(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert "x86-64 Linux" in str(qnn_available())
    with pytest.raises(QCompileError, match="cannot verify on the QNN HTP backend: the HTP simulator runs on x86-64"):
        _compile(evaluation=None)


def _dynamic_model(tmp_path):
    """A one-Conv QDQ-free model whose batch is dynamic: the EP cannot get its shapes."""
    w = nh.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("Conv", ["input", "w"], ["y"], name="conv")],
        "g",
        [oh.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [w],
    )
    path = tmp_path / "dynamic.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]), path)
    return path


def test_a_model_the_htp_refuses_is_an_error_quoting_ort(tmp_path):
    from qcompile.targets.qnn_run import QnnRunner

    runner = QnnRunner(_dynamic_model(tmp_path), {"soc_model": "57"}, False, {})
    with pytest.raises(
        QCompileError, match="QNN HTP refused the model: .*fallback to CPU EP has been explicitly disabled"
    ):
        runner.session()


def test_a_context_binary_that_cannot_compile_is_an_error(tmp_path):
    from qcompile.targets.qnn_context import write_context

    with pytest.raises(QCompileError, match="QNN HTP could not compile a context binary: "):
        write_context(_dynamic_model(tmp_path), {"soc_model": "57"}, False, {})


def test_int4_weights_pinned_in_a_plan_run_per_channel_on_the_htp(tmp_path):
    """A plan that asks for int4 Conv weights: per-channel int4 in the file, the int32 bias rescaled to
    the int4 weight's scales, and the HTP agreeing with the QDQ model on ORT."""
    plan = tmp_path / "plan.json"
    pins = {name: {"dtype": "int4", "axis": 0, "symmetric": True} for name in ("conv2.w", "conv3.w")}
    plan.write_text(json.dumps({"tensors": pins, "nodes": {}}))
    result = _compile(plan=plan)
    spec, bias, act = (result.plan.tensors[n] for n in ("conv2.w", "conv2.b", "r1"))
    assert spec.dtype == "int4" and spec.axis == 0 and spec.scale_array().size == 32
    np.testing.assert_allclose(bias.scale_array(), act.scale_array() * spec.scale_array(), rtol=1e-6)
    int4 = {v.name for v in result.model.graph.initializers.values() if v.dtype == ir.DataType.INT4}
    assert {"conv2.w_int4", "conv3.w_int4", "conv2.w_zero_point", "conv3.w_zero_point"} <= int4  # ONNX's INT4
    dep = result.card["deployment"]
    assert dep["npu"]["node_share"] == 1.0 and dep["float_tensors"] == []
    qdq = dep["qdq_on_ort"]["outputs"][0]["sqnr_db"]
    assert abs(_sqnr(result) - qdq) < 1.0
