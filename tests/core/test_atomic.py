import os
import signal
from pathlib import Path

import pytest

import qcompile
import qcompile.model_io as model_io
from qcompile.atomic import StagedFolder, atomic_write, signals_deferred
from qcompile.model_io import load_model, save_model
from tests.helpers import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"


def _visible(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_atomic_write_replaces_whole_file(tmp_path):
    atomic_write(tmp_path / "a.txt", "old")
    atomic_write(tmp_path / "a.txt", b"new")
    assert _visible(tmp_path) == {"a.txt": b"new"}


def test_staged_folder_publishes_new_folder_in_one_rename(tmp_path):
    out = tmp_path / "out"
    with StagedFolder(out) as stage:
        stage.file("b").write_text("2")
        stage.file("a").write_text("1")
        assert not out.exists()
        published = stage.commit(order=["b"])
    assert [p.name for p in published] == ["b", "a"]
    assert _visible(out) == {"a": b"1", "b": b"2"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_folder_discards_everything_on_exception(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("previous")
    with pytest.raises(RuntimeError), StagedFolder(out) as stage:
        stage.file("a").write_text("half")
        raise RuntimeError("died mid-write")
    assert _visible(out) == {"a": b"previous"}


def test_compile_result_save_interrupted_mid_write_writes_nothing(tmp_path, monkeypatch):
    result = qcompile.compile(MODEL, calibration=CALIB, measure_latency=False)
    real_write_text = Path.write_text

    def fail_on_card(self, text, *a, **k):
        if self.name == "card.md":
            raise KeyboardInterrupt
        return real_write_text(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", fail_on_card)
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_signals_arriving_during_commit_are_delivered_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("renamed")
    assert done == ["renamed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_external_data_save_lands_data_and_model_together(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 0)
    out = save_model(load_model(MODEL), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert load_model(out).graph.initializers  # the model finds its data by the relative name


def test_staging_folders_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".staging-{dead.stdout.strip()}-abc").mkdir()  # left by a SIGKILLed run
    (out / f".staging-{os.getppid()}-def").mkdir()  # a run that is still going
    with StagedFolder(out) as stage:
        stage.file("a").write_text("1")
        stage.commit()
    assert sorted(p.name for p in out.iterdir()) == [f".staging-{os.getppid()}-def", "a"]
