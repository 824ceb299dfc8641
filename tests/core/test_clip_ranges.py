"""MSE and entropy ranges read off a streaming histogram, checked on the raw data."""

import numpy as np
import pytest

from qcompile.calibrators import HISTOGRAM_CALIBRATORS, EntropyStat, HistogramStat, MseStat, make_stat
from qcompile.clip_ranges import ALPHAS
from qcompile.quant_math import INT_RANGES, dequantize, quantize, scale_zero_point


def _mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of x after uint8 quantization with range [lo, hi], computed directly."""
    q = INT_RANGES["uint8"]
    scale, zp = scale_zero_point(lo, hi, q, symmetric=False)
    return float(np.mean((dequantize(quantize(x, scale, zp, q), scale, zp) - x) ** 2))


def _heavy_tailed(rng) -> list[np.ndarray]:
    """Student-t activations (2 degrees of freedom): a few values far out, where min/max spends
    most of its levels."""
    return [rng.standard_t(2, 20_000) for _ in range(4)]


def _fed(stat, parts):
    for p in parts:
        stat.update(p)
    return stat


def test_mse_range_is_close_to_the_best_scaled_range_on_the_raw_data(rng):
    parts = _heavy_tailed(rng)
    x = np.concatenate(parts)
    lo, hi = _fed(MseStat(), parts).range()
    brute = min(_mse(x, a * x.min(), a * x.max()) for a in ALPHAS)
    assert hi < x.max() and lo > x.min()  # the far tails are clipped
    assert _mse(x, lo, hi) <= 1.1 * brute
    assert _mse(x, lo, hi) < _mse(x, x.min(), x.max())


def test_entropy_range_clips_rare_outliers_and_keeps_a_dense_range(rng):
    parts = _heavy_tailed(rng)
    x = np.concatenate(parts)
    lo, hi = _fed(EntropyStat(), parts).range()
    assert np.percentile(x, 99) < hi < x.max() / 2 and x.min() / 2 < lo < np.percentile(x, 1)
    uniform = [rng.uniform(-1, 1, 20_000) for _ in range(3)]
    ulo, uhi = _fed(EntropyStat(), uniform).range()
    assert ulo < -0.9 and uhi > 0.9  # nothing to clip: the range stays whole


def test_every_histogram_calibrator_reads_off_one_histogram(rng):
    parts = _heavy_tailed(rng)
    shared = _fed(EntropyStat(), parts)  # the statistic calibration keeps for the selective policy
    for name in HISTOGRAM_CALIBRATORS:
        alone = _fed(HistogramStat(bins=8192) if name == "percentile" else make_stat(name), parts)
        assert shared.range_by(name) == alone.range()
    assert shared.range_by("minmax") == (min(p.min() for p in parts), max(p.max() for p in parts))


@pytest.mark.parametrize("name", ["mse", "entropy"])
def test_merged_chunks_give_the_range_of_one_pass(rng, name):
    parts = _heavy_tailed(rng)
    whole = _fed(make_stat(name), parts)
    first, second = _fed(make_stat(name), parts[:2]), _fed(make_stat(name), parts[2:])
    first.merge(second)
    assert first.range() == whole.range()


@pytest.mark.parametrize("name", ["mse", "entropy"])
def test_constant_and_empty_tensors_keep_their_range(name):
    assert make_stat(name).range() == (0.0, 0.0)
    assert _fed(make_stat(name), [np.full(10, 3.0)]).range() == (3.0, 3.0)
