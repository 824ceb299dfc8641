"""Models that arrive quantized: QDQ files keep their scales, the card says what it compared
with, a file qcompile wrote comes back byte for byte, other forms are refused with their ops named."""

import json

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest

import qcompile
from qcompile.card import render_markdown
from qcompile.errors import QCompileError, QCompileWarning
from qcompile.quant_math import sqnr_db
from tests.support.quant_models import conv_model, feeds
from tests.support.quantized_files import dq_params_by_reader, ort_dynamic, ort_static, qat_export
from tests.test_cli import qc


def _compile(model, rng, **options):
    return qcompile.compile(
        model, calibration=feeds(rng, 4), evaluation=feeds(rng, 8), measure_latency=False, **options
    )


def test_an_ort_qdq_file_keeps_every_scale_and_says_what_it_compared_with(tmp_path, rng):
    float_path, path = ort_static(tmp_path, rng)
    with pytest.warns(QCompileWarning, match=r"the model arrived quantized \(qdq: .*its scales are kept"):
        result = _compile(path, rng)
    # every op sees the quantization the file gave it, tensor by tensor
    assert dq_params_by_reader(result.to_proto()) == dq_params_by_reader(onnx.load(path))
    assert result.card["ort_kernels"] == {"integer": 3, "float": 0}
    # ONNX Runtime's quantizer dropped the Relu after the Conv (its Q saturates at 0): the reference has it back
    assert result.card["imported"] == {
        "tensors": 10,
        "reference": "dequantized",
        "legalised": {},
        "reference_relus": ["r"],
    }
    assert all(o["sqnr_db"] > 25 for o in result.card["fidelity"]["outputs"])
    assert result.card["calibration_samples"] == 0 and result.plan.meta["imported"] is True
    card = render_markdown(result.card)
    assert "- **imported**: the given model was already quantized" in card.splitlines()[2]
    assert "Fidelity below is against **the dequantized graph**" in card
    assert "1 Relu(s) the file's Q/DQ perform by saturating at 0 (the quantizer dropped them)" in card
    json.loads(json.dumps(result.card, allow_nan=False, default=str))  # strict JSON: no Infinity


def test_with_a_reference_the_card_compares_with_it(tmp_path, rng):
    float_path, path = ort_static(tmp_path, rng)
    samples = feeds(rng, 8)
    result = qcompile.compile(path, calibration=feeds(rng, 4), evaluation=samples, measure_latency=False,
                              reference=float_path)  # fmt: skip
    assert result.card["imported"]["reference"] == "given"
    f = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([f.run(["y"], s)[0] for s in samples])
    got = np.concatenate([q.run(["y"], s)[0] for s in samples])
    assert abs(result.card["fidelity"]["outputs"][0]["sqnr_db"] - sqnr_db(want, got)) < 1e-9
    with pytest.raises(QCompileError, match="the reference model is quantized too"):
        _compile(path, rng, reference=path)


def test_a_file_qcompile_wrote_imports_to_the_same_plan_and_bytes(rng):
    first = _compile(conv_model(rng), rng)
    again = _compile(first.to_proto(), rng)
    assert again.plan.tensors == first.plan.tensors
    assert again.to_proto().SerializeToString() == first.to_proto().SerializeToString()


def test_a_qat_export_compiles_with_its_own_scales(rng):
    proto = qat_export(rng)
    samples = [{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(6)]
    result = qcompile.compile(proto, calibration=samples[:2], evaluation=samples, measure_latency=False)
    assert dq_params_by_reader(result.to_proto()) == dq_params_by_reader(proto)
    assert result.card["ort_kernels"]["integer"] == 1


def test_requantize_calibrates_afresh_and_policies_need_it(tmp_path, rng):
    _, path = ort_static(tmp_path, rng)
    with pytest.raises(QCompileError, match=r"--policy hybrid chooses precision afresh: add --requantize"):
        _compile(path, rng, policy="hybrid")
    result = _compile(path, rng, requantize=True)
    assert "imported" not in result.card and result.card["calibration_samples"] == 4
    assert result.card["given_quantization"]["kinds"] == ["qdq"]
    # compared with the float graph beneath the file's Q/DQ, and the card's first lines say so
    assert result.card["dequantized"] == {"reference": "dequantized"}
    assert "--requantize took its Q/DQ off and it was compiled afresh" in render_markdown(result.card).splitlines()[2]


def test_a_dynamically_quantized_file_is_refused_with_its_ops_named(tmp_path, rng):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(4, 1, 2, 4, 4)).astype(np.float32))
    r = qc("compile", ort_dynamic(tmp_path, rng), "--calib", calib, "-o", tmp_path / "out")
    assert r.returncode == 2
    assert "the model is dynamically quantized (integer-ops: " in r.stderr and "ConvInteger" in r.stderr
    assert "pass the float model it was made from" in r.stderr


def test_a_qoperator_file_is_imported_through_its_qdq_form(tmp_path, rng):
    _, qdq = ort_static(tmp_path, rng)
    (tmp_path / "qop").mkdir()
    _, qoperator = ort_static(tmp_path / "qop", rng, "QOperator")
    samples = feeds(rng, 8)
    result = qcompile.compile(qoperator, calibration=samples[:2], evaluation=samples, measure_latency=False)
    assert result.card["given_quantization"]["kinds"][-1] == "qoperator"
    assert result.card["ort_kernels"] == {"integer": 3, "float": 0}
    given = ort.InferenceSession(str(qoperator), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    for s in samples:  # the same integer kernels with the same parameters: the same bits
        for a, b in zip(given.run(None, s), ours.run(None, s), strict=True):
            np.testing.assert_array_equal(a, b)


def test_inspect_names_the_form(tmp_path, rng):
    _, path = ort_static(tmp_path, rng)
    r = qc("inspect", path)
    assert r.returncode == 0 and "quantization: qdq: 10 DequantizeLinear, 6 QuantizeLinear" in r.stdout


def test_a_reference_with_other_outputs_is_refused(tmp_path, rng):
    from onnx import helper

    _, path = ort_static(tmp_path, rng)
    other = helper.make_model(qat_export(rng).graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(QCompileError, match=r"the reference model's inputs \['x'\] and outputs \['y'\] are not the"):
        _compile(path, rng, reference=other)


def test_a_plan_pin_without_a_scale_needs_requantize(tmp_path, rng):
    from qcompile.plan import QuantPlan, QuantSpec

    _, path = ort_static(tmp_path, rng)
    pins = QuantPlan(tensors={"r": QuantSpec("uint16")})
    with pytest.raises(QCompileError, match="plan asks for tensor 'r' as uint16 without a scale: add --requantize"):
        _compile(path, rng, plan=pins)


def test_an_nncf_qdq_file_keeps_every_scale(rng):
    nncf = pytest.importorskip("nncf", reason="NNCF is the optional `compare` extra (pip install .[compare])")
    data = feeds(rng, 16)
    proto = nncf.quantize(onnx_ir.to_proto(conv_model(rng)), nncf.Dataset(data), subset_size=16)
    result = qcompile.compile(proto, calibration=data[:2], evaluation=feeds(rng, 8), measure_latency=False)
    assert result.card["imported"]["tensors"] > 0
    assert dq_params_by_reader(result.to_proto()) == dq_params_by_reader(proto)


def test_an_imported_dtype_the_target_does_not_run_is_replanned_and_recorded(rng):
    proto = qat_export(rng)
    for init in proto.graph.initializer:  # the Gemm's output in uint16, as an NPU export might have it
        if init.name == "h_z":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array(0, np.uint16), "h_z"))
    samples = [{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(4)]
    result = qcompile.compile(proto, calibration=samples, evaluation=samples, measure_latency=False)
    spec = result.plan.tensors["h"]
    assert spec.dtype == "uint8" and result.plan.meta["legalised"] == {
        "h": "uint16 → uint8: ort-cpu runs int8, uint8, int32 (range kept)"
    }
    # the real range the file gave h, [0, 65535 · 0.05], is kept: 255 steps of 65535 · 0.05 / 255
    np.testing.assert_allclose(spec.scale_array(), 65535 * 0.05 / 255, rtol=1e-6)
    x = result.plan.tensors["x"]  # a legal spec stays the file's
    assert spec.zero_point == (0,) and x.dtype == "int8" and x.scale_array() == np.float32(0.03)
    assert "  - re-planned h: uint16 → uint8" in render_markdown(result.card)


def test_dequantize_compiles_a_dynamic_model_afresh(tmp_path, rng):
    path = ort_dynamic(tmp_path, rng)
    with pytest.raises(QCompileError, match="or --dequantize to take its weights back to float"):
        _compile(path, rng)
    result = _compile(path, rng, dequantize=True)
    assert result.card["given_quantization"]["kinds"] == ["integer-ops"]
    assert result.card["ort_kernels"]["integer"] >= 2 and result.card["calibration_samples"] == 4
    assert "- **dequantized**: the given model was dynamically quantized" in render_markdown(result.card)
    with pytest.raises(QCompileError, match="--dequantize is for dynamically quantized models; this one is float"):
        _compile(conv_model(rng), rng, dequantize=True)


def test_ddddocrs_dynamically_quantized_recognizer_dequantizes_and_compiles(tmp_path):
    from tests.support import real_data
    from tests.support.real_models import fetch_file

    try:
        path = fetch_file("ddddocr", "1.6.1", "ddddocr/common_old.onnx")  # onnx.quantize 0.1: 21 ConvInteger, an LSTM
    except QCompileError as e:
        pytest.skip(str(e))
    samples = real_data.captcha_samples(12)
    with pytest.raises(QCompileError, match=r"dynamically quantized \(integer-ops: .*ConvInteger"):
        qcompile.compile(path, calibration=samples, measure_latency=False)
    result = qcompile.compile(path, calibration=samples[:8], evaluation=samples[8:], measure_latency=False,
                              dequantize=True)  # fmt: skip
    assert result.card["ort_kernels"]["integer"] >= 20
    given = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    for s in samples[8:]:  # both int8 models of the same network: their per-frame classes mostly agree
        a, b = given.run(None, s)[0], ours.run(None, s)[0]
        assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9


def test_a_weight_only_model_passes_through_with_a_note(rng):
    from onnx import TensorProto, helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weights = [(rng.normal(size=shape) * 0.1).astype(np.float32) for shape in ((64, 64), (64, 32))]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], "mm1"),
            helper.make_node("Relu", ["h"], ["r"], "relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], "mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
        [onnx.numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(weights)],
    )
    quantizer = MatMulNBitsQuantizer(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), block_size=32
    )
    quantizer.process()
    proto = quantizer.model.model
    data = [{"x": rng.normal(size=(4, 64)).astype(np.float32)} for _ in range(6)]
    with pytest.warns(QCompileWarning, match=r"weight-only: 2 MatMulNBits\): kept as it is"):
        result = qcompile.compile(proto, calibration=data, evaluation=data, measure_latency=False)
    assert result.card["ort_kernels"] == {"integer": 0, "float": 0, "weight_only": 2}
    assert [v["fails"] for v in result.card["verdict"]] == [False]
    assert result.card["verdict"][0]["problem"].startswith("a weight-only model: 2 weight-only kernels")
    assert result.card["fidelity"]["outputs"][0]["max_abs_error"] == 0.0  # nothing else was changed


def test_a_tied_op_with_two_scales_in_the_file_is_kept_and_said(tmp_path, rng):
    _, path = ort_static(tmp_path, rng)
    proto = onnx.load(path)
    scale = next(i for i in proto.graph.initializer if i.name == "r_scale")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 2, "p_scale"))
    for node in proto.graph.node:  # MaxPool's output quantized with twice its input's scale
        if node.input[0] in ("p", "p_QuantizeLinear_Output"):
            node.input[1] = "p_scale"
    result = _compile(proto, rng)
    assert dq_params_by_reader(result.to_proto()) == dq_params_by_reader(proto)  # the file's scales, both
    notes = result.plan.meta["legalised"]
    assert sorted(notes) == ["node flatten", "node pool"]  # p, between them, is the odd one out
    assert notes["node pool"] == (
        "MaxPool reads and writes different scales in the file: runs as DequantizeLinear → float "
        "MaxPool → QuantizeLinear (a requantization), not as one integer op"
    )
    assert "  - node pool: MaxPool reads and writes different scales" in render_markdown(result.card)
