import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators import EmaMinMaxStat, HistogramStat, MinMaxStat, make_stat


def batches(rng):
    return [rng.normal(0, s, 4000) * s + m for s, m in ((0.1, 0), (1, 3), (5, -2), (0.5, 0), (20, 10))]


def test_minmax_matches_numpy(rng):
    data = batches(rng)
    stat = MinMaxStat()
    for d in data:
        stat.update(d)
    allx = np.concatenate(data)
    assert stat.range() == (allx.min(), allx.max())


def test_ema_matches_its_recurrence(rng):
    data = batches(rng)
    stat = EmaMinMaxStat(momentum=0.25)
    lo, hi = data[0].min(), data[0].max()
    for d in data[1:]:
        lo, hi = 0.75 * lo + 0.25 * d.min(), 0.75 * hi + 0.25 * d.max()
    for d in data:
        stat.update(d)
    np.testing.assert_allclose(stat.range(), (lo, hi))


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99, 100.0])
def test_streaming_histogram_percentile_within_two_bins_of_numpy(rng, percentile):
    data = batches(rng)
    stat = HistogramStat(percentile, bins=2048)
    for d in data:
        stat.update(d)
    allx = np.concatenate(data)
    want = np.percentile(allx, [100 - percentile, percentile])
    got = stat.range()
    assert abs(got[0] - want[0]) <= 2 * stat.width and abs(got[1] - want[1]) <= 2 * stat.width
    assert stat.counts.sum() == allx.size and stat.counts.size == 2048  # memory is fixed, not per sample


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)), min_size=1, max_size=6), st.integers(0, 2**31))
def test_rebinning_is_exact(parts, seed):
    rng = np.random.default_rng(seed)
    data = [rng.normal(m, s, 300) for m, s in parts]
    stat = HistogramStat(99.0, bins=256)
    for d in data:
        stat.update(d)
    allx = np.concatenate(data)
    direct = np.bincount(np.floor(allx / stat.width).astype(np.int64) - stat.origin, minlength=256)
    np.testing.assert_array_equal(direct, stat.counts)


def test_constant_tensor_has_a_valid_range():
    stat = HistogramStat()
    stat.update(np.full(100, 3.0))
    lo, hi = stat.range()
    assert lo == hi == 3.0


@pytest.mark.parametrize("calibrator", ["percentile", "entropy", "mse"])
def test_histogram_after_a_first_batch_of_zeros(rng, calibrator):
    # a recurrent state starts at zero: the first bins are 2^-110 wide, later values 1e3 times larger
    stat = make_stat(calibrator)
    data = [np.zeros(256), np.abs(rng.normal(0, 300, 4000))]  # a Relu's output, say
    for d in data:
        stat.update(d)
    lo, hi = stat.range()
    allx = np.concatenate(data)
    assert lo == 0 < hi <= allx.max()
    assert stat.counts.sum() == allx.size


def test_unknown_calibrator():
    with pytest.raises(ValueError, match="unknown calibrator 'kl'; known: minmax, ema, percentile, mse, entropy"):
        make_stat("kl")
    with pytest.raises(ValueError, match="percentile must be in"):
        HistogramStat(30.0)


def _chunked(calibrator, data, split):
    first, second = make_stat(calibrator), make_stat(calibrator)
    for d in data[:split]:
        first.update(d)
    for d in data[split:]:
        second.update(d)
    first.merge(second)
    return first


@pytest.mark.parametrize("split", [0, 1, 3, 5])
def test_minmax_and_ema_merge_equal_one_pass(rng, split):
    data = batches(rng)
    for calibrator in ("minmax", "ema"):
        whole = make_stat(calibrator)
        for d in data:
            whole.update(d)
        np.testing.assert_allclose(_chunked(calibrator, data, split).range(), whole.range(), rtol=1e-12)


@pytest.mark.parametrize("split", [0, 1, 3, 5])
def test_histogram_merge_equals_numpy_histogram_at_merged_width(rng, split):
    data = batches(rng)
    merged = _chunked("percentile", data, split)
    edges = (merged.origin + np.arange(merged.bins + 1)) * merged.width
    expected, _ = np.histogram(np.concatenate(data), bins=edges)
    np.testing.assert_array_equal(merged.counts, expected)  # exact re-binning: no sample lost or moved
