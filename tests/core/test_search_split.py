import numpy as np

from qcompile.search_split import SearchSplit


def _stream(n):
    return ({"i": np.array(i)} for i in range(n))


def _indices(samples):
    return sorted(int(s["i"]) for s in samples)


def test_every_sample_goes_to_exactly_one_side_and_the_search_spans_the_stream():
    split = SearchSplit(_stream(200), 8)
    calibrated = _indices(split)
    search = _indices(split.samples)
    assert len(search) == 8 and sorted(calibrated + search) == list(range(200))
    assert not split.too_few and split.calibrated == 192
    # the first 8 would all be < 8; a uniform sample of 200 reaches the second half
    assert max(search) >= 100


def test_the_same_stream_gives_the_same_search_samples():
    first, second = SearchSplit(_stream(100), 8), SearchSplit(_stream(100), 8)
    assert list(map(int, (s["i"] for s in first))) == list(map(int, (s["i"] for s in second)))
    assert _indices(first.samples) == _indices(second.samples)


def test_recorded_windows_in_order_each_reach_the_search():
    # 10 recordings of 40 windows each, one after another: a uniform sample of 8 should not
    # come from one or two of them
    split = SearchSplit(_stream(400), 8)
    list(split)
    assert len({i // 40 for i in _indices(split.samples)}) >= 4


def test_too_few_samples_to_spare_hands_back_all_of_them():
    split = SearchSplit(_stream(12), 8)
    calibrated = _indices(split)
    assert split.too_few and len(calibrated) == 4
    assert _indices(split.samples + split.rest) == list(range(12))


def test_no_search_set_aside():
    split = SearchSplit(_stream(5), 0)
    assert _indices(split) == list(range(5)) and split.samples == [] and not split.too_few
