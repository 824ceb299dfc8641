"""One single-op model per lowered op: compiled for `tflite`, run in LiteRT's reference kernels and
compared bit-exactly with the numpy model of TFLite's integer arithmetic, and within 1 LSB of the
same plan's QDQ model on ONNX Runtime; TFLite Micro runs the same file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qcompile
from qcompile.targets.tflite import tflite_model_of
from qcompile.targets.tflite_run import LiteRtRunner, TflmRunner, to_runtime
from tests.support.tflite_reference import run_reference
from tests.targets.tflite_cases import CASES, samples_for


def _compile(name: str):
    case = CASES[name]
    calib = samples_for(case, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(
            case.build(), case.target, calibration=calib, evaluation=calib[:6], measure_latency=False
        )
    return case, result, tflite_model_of(result.model, result.target)


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_is_bit_exact_with_the_integer_reference(name):
    case, result, tm = _compile(name)
    assert set(case.expect) <= set(tm.op_counts), tm.op_counts
    assert tm.float_ops == [] and tm.transposes == []
    litert = LiteRtRunner(tm)
    for sample in samples_for(case, 4, seed=1):
        inputs = [to_runtime(t, sample[t.name]) for t in tm.inputs]
        want = run_reference(tm.data, inputs)
        got = litert.invoke(inputs)
        for w, g, t in zip(want, got, tm.outputs, strict=True):
            assert g.dtype == np.int8 and np.array_equal(w, g), f"{t.name}: {np.abs(w.astype(int) - g).max()} LSB"


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_is_within_one_step_of_the_qdq_model_on_ort(name):
    _, result, tm = _compile(name)
    checks = result.card["deployment"]["runtimes_vs_qdq"]
    for runtime in ("litert_reference", "litert_xnnpack"):
        for output, figures in checks[runtime].items():
            assert figures["max_lsb"] <= 1.0, (runtime, output, figures)


@pytest.mark.parametrize(
    "name", ["conv_same_relu", "depthwise_relu6", "gemm_relu", "add", "softmax", "concat_channels"]
)
def test_tflm_runs_the_same_file(name):
    case, _, tm = _compile(name)
    tflm, litert = TflmRunner(tm), LiteRtRunner(tm)
    for sample in samples_for(case, 3, seed=2):
        raw = [to_runtime(t, sample[t.name]) for t in tm.inputs]
        for a, b in zip(tflm.invoke(raw), litert.invoke(raw), strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


A16_CASES = sorted(
    n for n, c in CASES.items() if c.target == "tflite" and not n.endswith(("lookup_table", "prelu", "by_a_tensor"))
)


@pytest.mark.parametrize("name", A16_CASES)
def test_op_in_16x8_is_closer_to_float(name):
    """With 16-bit activations every op is at least 3 dB closer to float than in int8 (weighted ops are
    then bounded by their int8 weights), within 4 dB of the same plan's QDQ model on ORT (TFLite's int16
    logistic, tanh and softmax use lookup tables, a little coarser than ORT's float functions), and
    LiteRT's reference kernels are bit-exact with the numpy model of TFLite's 16x8 arithmetic."""
    case = CASES[name]
    calib = samples_for(case, 24)
    sqnr = {}
    for precision in ("a8w8", "a16w8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = qcompile.compile(
                case.build(),
                "tflite",
                calibration=calib,
                evaluation=calib[:6],
                measure_latency=False,
                target_options={"precision": precision},
            )
        sqnr[precision] = {o["name"]: o["sqnr_db"] for o in result.card["fidelity"]["outputs"]}
    dep = result.card["deployment"]
    assert dep["int16_tensors"] > 0 and dep["float_ops"] == 0, dep
    qdq = {o["name"]: o["sqnr_db"] for o in dep["qdq_on_ort"]["outputs"]}
    for out, value in sqnr["a16w8"].items():
        assert value >= sqnr["a8w8"][out] + 3 and value >= qdq[out] - 4, (out, value, sqnr["a8w8"][out], qdq[out])
    tm = tflite_model_of(result.model, result.target)  # and bit-exact with the numpy model of the 16x8 kernels
    litert = LiteRtRunner(tm)
    for sample in samples_for(case, 3, seed=1):
        inputs = [to_runtime(t, sample[t.name]) for t in tm.inputs]
        for want, got in zip(run_reference(tm.data, inputs), litert.invoke(inputs), strict=True):
            assert np.array_equal(want, got)
