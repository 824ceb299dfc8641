"""The public API end to end on the bundled sample (real handwritten digits)."""

import json

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.errors import QCompileError
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from tests.helpers import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"


@pytest.fixture(scope="module")
def result():
    return qcompile.compile(MODEL, "ort-cpu", CALIB, TEST, measure_latency=True)


def test_sample_meets_accuracy_and_size(result):
    fid = result.card["fidelity"]
    assert fid["samples"] == 360
    assert fid["quant_accuracy"] >= fid["float_accuracy"] - 0.01
    assert result.card["sizes"]["ratio"] <= 0.30
    assert result.card["ort_kernels"] == {"integer": 5, "float": 0}


def test_card_figures_are_consistent_with_the_runtime(result, tmp_path):
    files = result.save(tmp_path)
    assert files["model"].name == "digits_cnn.ort-cpu.onnx"
    card = json.loads(files["card_json"].read_text())
    assert card["sizes"]["quantized_bytes"] == files["model"].stat().st_size
    assert card["sizes"]["float_bytes"] == MODEL.stat().st_size
    assert set(card["latency_ms"]["quantized"]) == {"1", "default"}
    assert "Top-1 accuracy on labels" in files["card_md"].read_text()
    onnx.checker.check_model(str(files["model"]), full_check=True)
    # recompute the accuracy from the written file, independently of the card
    import onnxruntime as ort

    sess = ort.InferenceSession(str(files["model"]), providers=["CPUExecutionProvider"])
    data = np.load(TEST)
    preds = [sess.run(None, {"input": x[None]})[0].argmax() for x in data["input"]]
    assert np.mean(np.array(preds) == data["labels"]) == pytest.approx(card["fidelity"]["quant_accuracy"])


def test_plan_round_trip_reproduces_the_model(result, tmp_path):
    result.plan.save(tmp_path / "plan.json")
    again = qcompile.compile(
        MODEL, calibration=CALIB, evaluation=TEST, plan=tmp_path / "plan.json", measure_latency=False
    )
    assert again.plan.tensors == result.plan.tensors


def test_user_plan_keeps_a_node_in_float(tmp_path):
    plan = QuantPlan(nodes={"fc2": NodeDecision("float")}, tensors={"input": QuantSpec("float32")})
    res = qcompile.compile(MODEL, calibration=CALIB, evaluation=TEST, plan=plan, measure_latency=False)
    fc2 = next(n for n in res.model.graph if n.name == "fc2")
    assert fc2.inputs[1].producer() is None  # float weight, no DequantizeLinear
    assert "input" not in res.plan.tensors
    # conv1 reads the float input and fc2 is float: both stay float kernels
    assert res.card["ort_kernels"] == {"integer": 3, "float": 2}


def test_held_out_split_when_no_evaluation_data():
    res = qcompile.compile(MODEL, calibration=CALIB, measure_latency=False)
    assert res.card["evaluation"]["held_out"] and res.card["evaluation"]["samples"] == 359 // 5
    assert res.card["calibration_samples"] == 359 - 359 // 5


def test_graphsurgeon_in_and_out():
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(MODEL)))
    res = qcompile.compile(graph, calibration=CALIB, measure_latency=False)
    assert isinstance(res.to_graphsurgeon(), gs.Graph)


def test_calibration_errors_name_the_model_inputs(tmp_path):
    np.savez(tmp_path / "bad.npz", image=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(
        QCompileError, match=r"missing input\(s\) \['input'\]; the model expects input: float32\[1, 1, 8, 8\]"
    ):
        qcompile.compile(MODEL, calibration=tmp_path / "bad.npz")
    with pytest.raises(QCompileError, match="no calibration data given"):
        qcompile.compile(MODEL)


def test_save_refuses_to_overwrite_the_input(tmp_path):
    import shutil

    src = tmp_path / "m.ort-cpu.onnx"
    shutil.copy(MODEL, src)
    res = qcompile.compile(src, calibration=CALIB, measure_latency=False)
    res.stem = "m"  # the output name m.ort-cpu.onnx is now the input itself
    before = src.read_bytes()
    with pytest.raises(QCompileError, match="refusing to overwrite the input model"):
        res.save(tmp_path)
    assert src.read_bytes() == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(QCompileError, match="output folder .* is a file"):
        res.save(tmp_path / "file")


def test_same_inputs_give_byte_identical_outputs(tmp_path):
    a = qcompile.compile(MODEL, calibration=CALIB, measure_latency=False).save(tmp_path / "a")
    b = qcompile.compile(MODEL, calibration=CALIB, measure_latency=False).save(tmp_path / "b")
    assert a["model"].read_bytes() == b["model"].read_bytes()
    assert a["plan"].read_bytes() == b["plan"].read_bytes()


def test_the_callers_model_is_not_mutated():
    proto = onnx.load(str(MODEL))
    before = proto.SerializeToString()
    qcompile.compile(proto, calibration=CALIB, measure_latency=False)
    assert proto.SerializeToString() == before
