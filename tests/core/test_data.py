import numpy as np
import pytest

from qcompile.data import HoldoutSplit, iter_samples, model_input_specs
from qcompile.errors import QCompileError
from tests.helpers import parse

MODEL = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3] x, int64[1, 2] ids) => (float[1, 3] y) { y = Relu(x) }""")
SPECS = model_input_specs(MODEL)


def good(n=5):
    return {"x": np.ones((n, 1, 3), np.float32), "ids": np.zeros((n, 1, 2), np.int64)}


def test_npz_stacked_and_rank_matching(tmp_path):
    np.savez(tmp_path / "a.npz", **good())
    assert len(list(iter_samples(tmp_path / "a.npz", SPECS))) == 5
    np.savez(tmp_path / "b.npz", x=np.ones((4, 3), np.float32), ids=np.zeros((4, 2), np.int64), labels=np.arange(4))
    samples = list(iter_samples(tmp_path / "b.npz", SPECS))
    assert len(samples) == 4 and samples[0]["x"].shape == (1, 3) and samples[2]["labels"][0] == 2


def test_folder_and_iterable(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", **{k: v[:1] for k, v in good().items()})
    assert len(list(iter_samples(tmp_path, SPECS))) == 3
    assert (
        len(
            list(
                iter_samples(
                    ({"x": np.ones((1, 3), np.float32), "ids": np.zeros((1, 2), np.int64)} for _ in range(2)), SPECS
                )
            )
        )
        == 2
    )


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"x": np.ones((2, 1, 3), np.float32)},
            "missing input(s) ['ids']; the model expects x: float32[1, 3]; ids: int64[1, 2]",
        ),
        ({**good(2), "z": np.ones(2)}, "unknown array(s) ['z']"),
        (
            {"x": np.ones((2, 1, 4), np.float32), "ids": np.zeros((2, 1, 2), np.int64)},
            "input 'x' has shape [1, 4], the model expects x: float32[1, 3]",
        ),
        (
            {"x": np.ones((2, 1, 3), np.int32), "ids": np.zeros((2, 1, 2), np.int64)},
            "input 'x' has dtype int32, the model expects float32",
        ),
        (
            {"x": np.full((2, 1, 3), np.nan, np.float32), "ids": np.zeros((2, 1, 2), np.int64)},
            "input 'x' contains NaN or Inf",
        ),
        (
            {"x": np.ones((2, 1, 3), np.float32), "ids": np.zeros((3, 1, 2), np.int64)},
            "inputs disagree on the number of samples",
        ),
        ({**good(2), "labels": np.arange(3)}, "'labels' has 3 entries for 2 samples"),
    ],
)
def test_bad_npz_is_rejected_naming_the_problem(tmp_path, data, message):
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(QCompileError) as info:
        list(iter_samples(tmp_path / "bad.npz", SPECS))
    assert message in str(info.value)


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(QCompileError, match="calibration data is empty; the model expects x: float32"):
        list(iter_samples([], SPECS))
    with pytest.raises(QCompileError, match="calibration data .* does not exist"):
        list(iter_samples(tmp_path / "nope.npz", SPECS))
    with pytest.raises(QCompileError, match="data folder .* has no .npz or .npy files"):
        list(iter_samples(tmp_path, SPECS))
    with pytest.raises(QCompileError, match="no calibration data given"):
        list(iter_samples(None, SPECS))
    with pytest.raises(QCompileError, match="expected a dict of input name"):
        list(iter_samples([1, 2], SPECS))
    with pytest.raises(QCompileError, match="expected a .npz path, a folder or an iterable"):
        list(iter_samples(3.5, SPECS))


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(QCompileError, match="cannot read data file"):
        list(iter_samples(tmp_path / "obj.npz", SPECS))


def test_holdout_split_streams_and_keeps_every_fifth():
    split = HoldoutSplit(({"i": i} for i in range(12)), every=5)
    calib = [s["i"] for s in split.calibration()]
    assert [s["i"] for s in split.held] == [4, 9]
    assert calib == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]


def test_holdout_split_of_streams_keeps_every_fifth_run_of_consecutive_samples():
    split = HoldoutSplit(({"i": i} for i in range(45)), every=5, run=4)
    calib = [s["i"] for s in split.calibration()]
    assert [s["i"] for s in split.held] == [16, 17, 18, 19, 36, 37, 38, 39]
    assert sorted(calib + [s["i"] for s in split.held]) == list(range(45))


def test_holdout_split_with_one_sample_falls_back_to_in_sample():
    split = HoldoutSplit([{"i": 0}])
    assert [s["i"] for s in split.calibration()] == [0]
    assert split.held == [] and [s["i"] for s in split.first] == [0]


def test_npy_file_reads_like_a_one_array_npz(tmp_path):
    single = model_input_specs(
        parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }""")
    )
    np.save(tmp_path / "stacked.npy", np.ones((4, 1, 3), np.float32))
    np.save(tmp_path / "rank.npy", np.ones((5, 3), np.float32))
    assert len(list(iter_samples(tmp_path / "stacked.npy", single))) == 4
    assert [s["x"].shape for s in iter_samples(tmp_path / "rank.npy", single)] == [(1, 3)] * 5


def test_holdout_split_stops_holding_at_its_byte_cap():
    samples = ({"x": np.zeros(1000, np.float32)} for _ in range(50))  # 4 kB each
    split = HoldoutSplit(samples, every=5, max_bytes=3 * 4000)
    calib = list(split.calibration())
    assert len(split.held) == 3 and split.held_bytes == 12000 and len(calib) == 47


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_files_are_read_one_sample_at_a_time(tmp_path, save):
    import tracemalloc

    spec = model_input_specs(
        parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 512, 512] x) => (float[1, 512, 512] y) { y = Relu(x) }""")
    )
    x = np.random.default_rng(0).random((40, 1, 512, 512), dtype=np.float32)  # 40 MB, 1 MB per sample
    save(tmp_path / "big.npz", x=x, labels=np.arange(40))
    np.save(tmp_path / "big.npy", x)
    del x
    for path in (tmp_path / "big.npz", tmp_path / "big.npy"):
        tracemalloc.start()
        total = sum(float(s["x"].ravel()[0]) for s in iter_samples(path, spec))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total > 0 and peak < 8 * 2**20, f"{path.name}: peak {peak} bytes"
