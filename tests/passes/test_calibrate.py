import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from qcompile.errors import QCompileError
from qcompile.passes.calibrate import ApplyObservedShapes, calibrate
from tests.helpers import graph_signature, parse

TEXT = """<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4] x) => (float[1, 4] y) {
    w = Constant <value = float[4, 4] {1,0,0,0, 0,2,0,0, 0,0,-1,0, 0,0,0,3}> ()
    m = MatMul(x, w)
    y = Relu(m)
    s = Shape(y)
}"""


def test_ranges_match_numpy_and_graph_is_untouched(rng):
    model = parse(TEXT)
    xs = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(7)]
    before = graph_signature(model)
    res = calibrate(model, [{"x": x} for x in xs])
    assert graph_signature(model) == before
    w = np.diag([1, 2, -1, 3]).astype(np.float32)
    ms = np.stack([x @ w for x in xs])
    assert res.ranges["x"] == (np.min(xs), np.max(xs))
    np.testing.assert_allclose(res.ranges["m"], (ms.min(), ms.max()), rtol=1e-6)
    assert res.ranges["y"][0] == 0.0 and res.num_samples == 7
    assert "s" not in res.ranges and res.dtypes["s"] == "int64"  # non-float tensors are seen but not ranged


def test_observed_dtypes_fill_gaps():
    model = parse(TEXT)
    res = calibrate(model, [{"x": np.ones((1, 4), np.float32)}])
    m = model.graph.node(1).outputs[0]
    m.dtype = None
    ApplyObservedShapes(res)(model)
    assert m.dtype is not None and m.meta["qcompile.observed_shape"] == (1, 4)


def test_overflowing_float_model_is_reported():
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1] x) => (float[1] y) { y = Exp(x) }""")
    with pytest.raises(QCompileError, match="tensor 'y' became NaN or Inf on calibration sample 0"):
        calibrate(model, [{"x": np.array([1000.0], np.float32)}])


def test_worker_errors_come_back_with_their_message():
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1] x) => (float[1] y) { y = Exp(x) }""")
    samples = [{"x": np.array([1.0], np.float32)}] * 5 + [{"x": np.array([1000.0], np.float32)}]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(QCompileError, match="tensor 'y' became NaN or Inf on calibration sample 5") as e:
            calibrate(model, samples, executor=pool, chunk_size=2)
    assert e.value.exit_code == 2


def test_chunks_merge_to_the_one_pass_ranges(rng):
    xs = [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(11)]
    one = calibrate(parse(TEXT), xs, chunk_size=len(xs))
    with ThreadPoolExecutor(2) as pool:
        chunked = calibrate(parse(TEXT), xs, chunk_size=3, executor=pool)
    assert chunked.ranges == one.ranges and chunked.num_samples == 11


def test_unknown_calibrator_rejected_before_running():
    def never():
        raise AssertionError("no sample may be read")
        yield

    with pytest.raises(QCompileError, match="unknown calibrator 'kl'; known: minmax, ema, percentile"):
        calibrate(parse(TEXT), never(), calibrator="kl")


def test_alternatives_hold_each_histogram_calibrators_range(rng):
    xs = [{"x": rng.standard_t(3, size=(1, 4)).astype(np.float32)} for _ in range(40)]
    both = calibrate(parse(TEXT), xs, calibrator="mse", alternatives=True)
    assert both.ranges == both.alternatives["mse"]
    for name in ("minmax", "mse", "entropy"):
        assert both.alternatives[name] == calibrate(parse(TEXT), xs, calibrator=name).ranges
    assert set(both.alternatives) == {"minmax", "percentile", "mse", "entropy"}


def test_alternatives_need_a_histogram_calibrator(rng):
    with pytest.raises(QCompileError, match="chooses among the calibrators minmax, percentile, mse, entropy; 'ema'"):
        calibrate(parse(TEXT), [{"x": np.ones((1, 4), np.float32)}], calibrator="ema", alternatives=True)


def test_channel_means_match_numpy_and_every_executor(rng):
    xs = [{"x": rng.normal(size=(1, 4)).astype(np.float32) + np.arange(4, dtype=np.float32)} for _ in range(11)]
    axes = {"x": 1, "m": 1}
    one = calibrate(parse(TEXT), xs, chunk_size=3, mean_axes=axes)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunked = calibrate(parse(TEXT), xs, chunk_size=3, executor=pool, mean_axes=axes)
    stacked = np.concatenate([x["x"] for x in xs]).astype(np.float64)
    np.testing.assert_allclose(one.channel_means["x"], stacked.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(one.channel_means["m"], (stacked * [1, 2, -1, 3]).mean(axis=0), rtol=1e-6)
    assert set(chunked.channel_means) == {"x", "m"}
    for name in axes:
        assert np.array_equal(chunked.channel_means[name], one.channel_means[name])  # same plan, any executor
    assert calibrate(parse(TEXT), xs).channel_means == {}


def test_channel_ranges_match_numpy_and_every_executor(rng):
    xs = [{"x": (rng.normal(size=(1, 4)) * [1, 10, 0.1, 3]).astype(np.float32)} for _ in range(11)]
    axes = {"x": 1, "y": 1}
    one = calibrate(parse(TEXT), xs, chunk_size=3, range_axes=axes)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunked = calibrate(parse(TEXT), xs, chunk_size=3, executor=pool, range_axes=axes)
    stacked = np.concatenate([x["x"] for x in xs])
    relu = np.maximum(stacked @ np.diag([1, 2, -1, 3]).astype(np.float32), 0)
    np.testing.assert_array_equal(one.channel_ranges["x"][0], stacked.min(axis=0))
    np.testing.assert_array_equal(one.channel_ranges["x"][1], stacked.max(axis=0))
    np.testing.assert_allclose(one.channel_ranges["y"][1], relu.max(axis=0), rtol=1e-6)
    for name in axes:
        for got, want in zip(chunked.channel_ranges[name], one.channel_ranges[name], strict=True):
            assert np.array_equal(got, want)  # same plan, any executor
    assert calibrate(parse(TEXT), xs).channel_ranges == {}
