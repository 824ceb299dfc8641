"""End to end: the sample compiled for `tflite` and `tflm` from the CLI and the API; the TFLM C array
compiles; float I/O and the float `.tflite`; a QDQ file written by ONNX Runtime's quantizer keeps its
scales in the `.tflite`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings

import ai_edge_litert.schema_py_generated as S
import numpy as np
import onnx
import pytest

import qcompile
from qcompile.cli import main
from qcompile.targets.tflite import tflite_model_of
from qcompile.targets.tflite_run import LiteRtRunner
from tests.helpers import SAMPLES, run
from tests.support.tflite_reference import run_reference

CALIB, TEST = SAMPLES / "digits_calib.npz", SAMPLES / "digits_test.npz"


def _compile(target: str, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(
            SAMPLES / "digits_cnn.onnx", target, calibration=CALIB, evaluation=TEST, measure_latency=False, **kwargs
        )


@pytest.fixture(scope="module")
def tflm_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflm")
    assert (
        main(
            [
                "compile",
                str(SAMPLES / "digits_cnn.onnx"),
                "--target",
                "tflm",
                "--calib",
                str(CALIB),
                "--eval",
                str(TEST),
                "--no-latency",
                "-o",
                str(out / "digits"),
            ]
        )
        == 0
    )
    return out / "digits"


def test_cli_writes_the_tflm_deliverables(tflm_folder):
    names = {p.name for p in tflm_folder.iterdir()}
    assert {"digits_cnn.tflite", "model_data.h", "model_data.cc", "model_ops.h", "card.md"} <= names
    card = json.loads((tflm_folder / "card.json").read_text())
    dep = card["deployment"]
    assert dep["float_ops"] == 0 and dep["transposes_inside"] == 0
    assert dep["arena_rounded"] >= dep["arena_bytes"] > 0
    assert set(dep["runtimes_vs_qdq"]) == {"litert_reference", "litert_xnnpack", "tflm"}
    assert card["fidelity"]["outputs"][0]["sqnr_db"] > 25  # measured on TFLite Micro
    assert "## The .tflite file" in (tflm_folder / "card.md").read_text()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")
def test_c_array_compiles_and_holds_the_file(tflm_folder, tmp_path):
    subprocess.run(
        ["c++", "-std=c++17", "-c", str(tflm_folder / "model_data.cc"), "-o", str(tmp_path / "m.o")],
        check=True,
        cwd=tflm_folder,
    )
    source = (tflm_folder / "model_data.cc").read_text()
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", source))
    assert data == (tflm_folder / "digits_cnn.tflite").read_bytes()
    assert "alignas(16)" in source
    header = (tflm_folder / "model_data.h").read_text()
    arena = json.loads((tflm_folder / "card.json").read_text())["deployment"]["arena_rounded"]
    assert f"kModelTensorArenaSize = {arena};" in header


def test_op_list_registers_every_op(tflm_folder):
    ops = (tflm_folder / "model_ops.h").read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", ops)
    assert sorted(calls) == ["AddConv2D", "AddFullyConnected", "AddMaxPool2D", "AddReshape"]
    assert f"MicroMutableOpResolver<{len(calls)}>" in ops


def test_sample_is_bit_exact_with_the_integer_reference():
    result = _compile("tflite")
    tm = tflite_model_of(result.model, result.target)
    runner = LiteRtRunner(tm)
    x = np.load(TEST)["input"][:8].astype(np.float32)
    for i in range(len(x)):
        raw = runner.raw({"input": x[i : i + 1]})
        inputs = [
            np.clip(
                np.round(x[i : i + 1].transpose(0, 2, 3, 1) / tm.inputs[0].quant.scale[0])
                + tm.inputs[0].quant.zero_point[0],
                -128,
                127,
            ).astype(np.int8)
        ]
        assert np.array_equal(run_reference(tm.data, inputs)[0], raw[0])


def test_float_io_puts_quantize_and_dequantize_at_the_edges():
    result = _compile("tflite", target_options={"float_io": True})
    ops = result.card["deployment"]["ops"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1
    tm = tflite_model_of(result.model, result.target)
    assert [t.dtype for t in tm.inputs + tm.outputs] == ["float32", "float32"]
    assert result.card["fidelity"]["outputs"][0]["sqnr_db"] > 25


def test_float_tflite_matches_the_float_onnx_model(tmp_path):
    result = _compile("tflite", target_options={"float_model": True})
    files = result.save(tmp_path / "out")
    data = files["digits_cnn.float.tflite"].read_bytes()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    x = np.load(TEST)["input"][:1].astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1).copy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    want = run(qcompile.model_io.load_model(SAMPLES / "digits_cnn.onnx"), {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_ort_quantize_static_file_keeps_its_scales(tmp_path):
    """A QDQ model from onnxruntime.quantization (not qcompile) lowers with its own scales, tensor by tensor."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = np.load(CALIB)["input"][:32].astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": x[i : i + 1]} for i in range(len(x)))

        def get_next(self):
            return next(self.it, None)

    path = tmp_path / "ort_qdq.onnx"
    quantize_static(
        str(SAMPLES / "digits_cnn.onnx"),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(path, "tflite", calibration=CALIB, evaluation=TEST, measure_latency=False)
    tm = tflite_model_of(result.model, result.target)
    model = S.ModelT.InitFromPackedBuf(bytearray(tm.data), 0)
    tflite = {t.name.decode(): t for t in model.subgraphs[0].tensors}
    ort_model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in ort_model.graph.initializer}
    ours = {n.inputs[0].name: n.outputs[0].name for n in result.model.graph if n.op_type == "QuantizeLinear"}
    checked = 0
    for q in (n for n in ort_model.graph.node if n.op_type == "QuantizeLinear"):
        t = tflite.get(ours.get(q.input[0], ""))
        if t is None or t.quantization is None:
            continue
        assert np.float32(t.quantization.scale[0]) == np.float32(inits[q.input[1]]), q.input[0]
        assert t.quantization.zeroPoint[0] == int(inits[q.input[2]]), q.input[0]
        checked += 1
    assert checked >= 5
    assert result.card["fidelity"]["outputs"][0]["sqnr_db"] > 25  # against the dequantized graph, Relus restored
    assert len(result.card["imported"]["reference_relus"]) >= 3


def test_a16w8_runs_16_bit_activations_and_is_closer_to_float(tmp_path):
    """16-bit activations (int8 weights, int64 bias) wherever an op has the kernel: on LiteRT and TFLite
    Micro, closer to float than int8, and within 1 dB of the same plan's QDQ model on ORT."""
    int8 = _compile("tflm")
    wide = _compile("tflm", target_options={"precision": "a16w8"})
    dep = wide.card["deployment"]
    assert dep["int16_tensors"] >= 8 and dep["float_ops"] == 0
    assert {d.precision for d in wide.plan.nodes.values()} == {"int16"}
    assert all(s.dtype in ("int16", "int8", "int32") for s in wide.plan.tensors.values())
    sqnr = wide.card["fidelity"]["outputs"][0]["sqnr_db"]  # on TFLite Micro
    assert sqnr > int8.card["fidelity"]["outputs"][0]["sqnr_db"] + 1
    assert sqnr >= dep["qdq_on_ort"]["outputs"][0]["sqnr_db"] - 1


def test_cli_precision_flag(tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            [
                "compile",
                str(SAMPLES / "digits_cnn.onnx"),
                "--target",
                "tflite",
                "--precision",
                "a16w8",
                "--calib",
                str(CALIB),
                "--no-latency",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    assert card["target"]["options"]["precision"] == "a16w8" and card["deployment"]["int16_tensors"] > 0
    assert (
        main(
            [
                "compile",
                str(SAMPLES / "digits_cnn.onnx"),
                "--target",
                "ort-cpu",
                "--precision",
                "a16w8",
                "--calib",
                str(CALIB),
                "--no-latency",
                "-o",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )


def test_a_float_conv_between_quantized_tensors_is_a_float_island():
    """conv2 pinned float, relu2 int8 after it: DQ → Conv with its float weight → Q.  Its activations
    are integer and its output is read by a Q only, yet it is a float CONV_2D between DEQUANTIZE and
    QUANTIZE (it was lowered in int mode, and failed on its float weight)."""
    from qcompile.plan import NodeDecision, QuantPlan

    result = _compile("tflite", plan=QuantPlan(nodes={"conv2": NodeDecision("float", "pinned")}))
    dep = result.card["deployment"]
    assert dep["float_ops"] == 1 and "DEQUANTIZE" in dep["ops"] and "QUANTIZE" in dep["ops"]
    sqnr = result.card["fidelity"]["outputs"][0]["sqnr_db"]
    assert sqnr >= dep["qdq_on_ort"]["outputs"][0]["sqnr_db"] - 1.0


def test_a_file_with_no_integer_op_reads_as_a_failure():
    from qcompile.plan import NodeDecision, QuantPlan

    nodes = [n.name for n in qcompile.model_io.load_model(SAMPLES / "digits_cnn.onnx").graph]
    plan = QuantPlan(nodes={n: NodeDecision("float", "pinned") for n in nodes if n not in ("bn2", "dropout")})
    result = _compile("tflite", plan=plan)
    assert result.card["deployment"]["integer_ops"] == 0
    [problem] = [v for v in result.card["verdict"] if v["fails"]]
    assert problem["problem"].startswith("nothing runs in integer: 0 integer and ")
    assert problem["problem"].endswith("float ops in the .tflite file")


def test_float_island_after_a_flatten_of_nhwc_data():
    """Hybrid keeps the fully connected layers float: the float island reads the flatten of NHWC data,
    and its weight columns follow that order (a regression: they did not, and the file read −1.8 dB)."""
    # a floor that all int8 misses (39.0 dB on the search samples, biases corrected): the search keeps
    # conv1, conv2 and fc2 float (45.1); conv1 at 16 bits still meets it (43.2), conv2 and fc2 stay float
    # islands (conv2 between a 16-bit and an 8-bit region)
    result = _compile("tflite", policy="hybrid", metric="sqnr", floor=42)
    dep = result.card["deployment"]
    assert dep["float_ops"] >= 1 and "DEQUANTIZE" in dep["ops"]
    sqnr = result.card["fidelity"]["outputs"][0]["sqnr_db"]
    assert sqnr >= dep["qdq_on_ort"]["outputs"][0]["sqnr_db"] - 1.0
    # the search's float nodes were tried at 16 bits; the plan says what came of it
    a16 = result.card["search"]["a16"]
    assert a16["nodes"] and a16["kept"] == bool(a16["promoted"])
    for name in a16["nodes"]:
        assert result.plan.nodes[name].precision == ("int16" if name in a16["promoted"] else "float")
    assert f"16-bit activations instead of float: {len(a16['promoted'])} of the {len(a16['nodes'])}" in (
        qcompile.card.render_markdown(result.card)
    )
