"""Stage 3 on its own: the fidelity figures against an independent numpy computation."""

import numpy as np
import pytest

from qcompile.data import HoldoutSplit
from qcompile.metrics import OutputKind
from qcompile.runtime import SessionSource
from qcompile.verify import EvaluationSet, integer_kernels, verify
from tests.helpers import parse

TEXT = """<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4] x) => (float[1, 4] y, float[1, 4] z) <float k = {KK}> { y = Mul(x, k)
 z = Relu(y) }"""


def _source(k: float) -> SessionSource:
    return SessionSource.of(parse(TEXT.replace("KK", repr(k))))


def test_figures_match_numpy(rng):
    xs = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(6)]
    samples = [{"x": x, "labels": np.array([int(np.argmax(x))])} for x in xs]
    result = verify(
        _source(2.0),
        _source(2.1),
        EvaluationSet(samples, True, "test"),
        measure_latency=True,
        kinds={"y": OutputKind(scores=True)},
    )
    ref = np.concatenate([2.0 * x for x in xs]).astype(np.float64)
    got = np.concatenate([np.float32(2.1) * x for x in xs]).astype(np.float64)
    y = result.fidelity.outputs[0]
    assert y.name == "y"
    assert y.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)), abs=1e-4)
    assert y.cosine == pytest.approx(1.0) and y.max_abs_error == pytest.approx(np.max(np.abs(ref - got)), rel=1e-5)
    assert y.top1_agreement == 1.0  # scaling keeps the argmax
    assert result.fidelity.float_accuracy == result.fidelity.quant_accuracy == 1.0
    assert set(result.latency_ms) == {"float", "quantized"} and result.ort_kernels == {"integer": 0, "float": 0}


def test_evaluation_set_choice():
    samples = [{"x": np.full((1, 4), i, np.float32)} for i in range(10)]
    split = HoldoutSplit(iter(samples))
    calibrated = list(split.calibration())
    chosen = EvaluationSet.choose(None, split, ())
    assert chosen.held_out and len(chosen.samples) == 2 and len(calibrated) == 8
    tiny = HoldoutSplit(iter(samples[:1]))
    list(tiny.calibration())
    fallback = EvaluationSet.choose(None, tiny, ())
    assert not fallback.held_out and fallback.source.startswith("calibration samples")


def test_integer_kernels_counts_what_ort_fuses():
    qdq = parse("""<ir_version: 8, opset_import: ["": 21]>
g (float[1, 4] x) => (float[1, 3] y) <float s = {0.1}, uint8 z = {128}, int8[4, 3] w = {1,2,3,4,5,6,7,8,9,10,11,12},
 float ws = {0.01}, int8 wz = {0}> {
    q = QuantizeLinear(x, s, z)
    dx = DequantizeLinear(q, s, z)
    dw = DequantizeLinear(w, ws, wz)
    m = MatMul(dx, dw)
    mq = QuantizeLinear(m, s, z)
    y = DequantizeLinear(mq, s, z)
}""")
    assert integer_kernels(SessionSource.of(qdq)) == {"integer": 1, "float": 0}
