"""The command line, end to end, in a subprocess (as users and build scripts run it)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"


def qc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "qcompile.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_compile_writes_model_plan_and_card(tmp_path):
    out = tmp_path / "out"
    r = qc("compile", MODEL, "--calib", CALIB, "--eval", SAMPLES / "digits_test.npz", "-o", out, "--no-latency")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "digits_cnn.ort-cpu.onnx", "plan.json"]
    assert "# Quantization card: digits_cnn → ort-cpu" in r.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["calibrator"] == "minmax" and card["per_channel"] is True


def test_per_tensor_percentile_and_plan(tmp_path):
    r = qc(
        "compile",
        MODEL,
        "--calib",
        CALIB,
        "--per-tensor",
        "--calibrator",
        "percentile",
        "-o",
        tmp_path / "a",
        "--no-latency",
    )
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["tensors"]["conv1.w"]["axis"] is None and plan["meta"]["calibrator"] == "percentile"
    plan["nodes"]["fc2"]["precision"] = "float"
    (tmp_path / "edited.json").write_text(json.dumps(plan))
    assert plan["meta"]["bias_correction"]  # corrected biases keep their names when the plan is reused
    r = qc("compile", MODEL, "--calib", CALIB, "--plan", tmp_path / "edited.json", "-o", tmp_path / "b", "--no-latency")
    assert r.returncode == 0, r.stderr
    assert "| fc2 | Gemm | float | pinned by the user plan |" in r.stdout
    assert "fc2" not in json.loads((tmp_path / "b" / "plan.json").read_text())["meta"]["bias_correction"]
    r = qc("compile", MODEL, "--calib", CALIB, "--no-bias-correction", "-o", tmp_path / "c", "--no-latency")
    assert r.returncode == 0, r.stderr
    assert "bias_correction" not in json.loads((tmp_path / "c" / "plan.json").read_text())["meta"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["compile", "missing.onnx", "--calib", CALIB, "-o", "x"], "model file missing.onnx does not exist"),
        (["compile", MODEL, "--calib", "nope.npz", "-o", "x"], "calibration data nope.npz does not exist"),
        (["compile", MODEL, "--calib", CALIB, "--plan", "nope.json", "-o", "x"], "cannot read plan file nope.json"),
        (["compile", MODEL, "--calib", CALIB, "-o", MODEL], "-o must be a folder, not a file"),
        (["inspect", CALIB], "is not an ONNX model"),
        (["compile", MODEL, "--calib", CALIB, "--jobs", "0", "-o", "x"], "--jobs must be at least 1, got 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    r = qc(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_calibration_data_exits_2(tmp_path):
    np.savez(tmp_path / "nan.npz", input=np.full((2, 1, 1, 8, 8), np.nan, np.float32))
    r = qc("compile", MODEL, "--calib", tmp_path / "nan.npz", "-o", tmp_path / "o")
    assert r.returncode == 2 and "contains NaN or Inf" in r.stderr


def test_argparse_rejects_unknown_target():
    r = qc("compile", MODEL, "--calib", CALIB, "--target", "tfl", "-o", "x")
    assert r.returncode == 2 and "invalid choice: 'tfl'" in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = qc("--debug", "compile", "missing.onnx", "--calib", CALIB, "-o", "x", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_inspect_lists_ops_and_quantizable_nodes():
    r = qc("inspect", MODEL)
    assert r.returncode == 0
    assert "opset 13" in r.stdout and "BatchNormalization" in r.stdout
    assert "ort-cpu: 14 nodes → 12 after prepare; 12 quantizable" in r.stdout
    assert "  batchnorm folding: −1 BatchNormalization" in r.stdout


def test_inspect_and_the_card_show_what_canonicalization_changed(tmp_path):
    from tests.support.residue import tf2onnx_blocks

    model = tmp_path / "blocks.onnx"
    model.write_bytes(tf2onnx_blocks(2).SerializeToString())
    r = qc("inspect", model)
    assert "  layout transposes: −2 Transpose" in r.stdout, r.stdout
    assert "  affine folding: −2 Add, −2 Mul, −2 Sub" in r.stdout, r.stdout
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 1, 8, 8, 8)).astype(np.float32))
    args = ("compile", model, "--calib", tmp_path / "calib.npz", "--no-latency")
    r = qc(*args, "-o", tmp_path / "out")
    assert "## Float graph" in r.stdout and "- layout transposes: −2 Transpose" in r.stdout
    plain = qc(*args, "--no-canonicalize", "-o", tmp_path / "plain")
    assert plain.returncode == 0 and "layout transposes" not in plain.stdout


def test_a_signal_wrapped_by_a_library_still_reads_as_an_interrupt(monkeypatch, capsys):
    import qcompile.cli as cli

    def import_interrupted(args):
        try:
            raise cli.Terminated()
        except KeyboardInterrupt as e:  # onnxruntime's import turns a signal into this
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(cli, "_cmd_compile", import_interrupted)
    assert cli.main(["compile", str(MODEL), "--calib", str(CALIB), "-o", "unused"]) == 143
    assert capsys.readouterr().err == "qcompile: terminated\n"


def test_importing_the_cli_does_not_load_the_runtime():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, qcompile.cli; print('onnxruntime' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_a_budget_that_is_not_met_exits_1_with_the_files_written(tmp_path):
    args = ("compile", MODEL, "--calib", CALIB, "--eval", SAMPLES / "digits_test.npz", "--no-latency")
    met = qc(*args, "--floor", "20", "-o", tmp_path / "met")
    assert met.returncode == 0 and "Budget: fidelity ≥ 20: " in met.stdout and "**met**" in met.stdout
    missed = qc(*args, "--metric", "sqnr", "--floor", "60", "-o", tmp_path / "missed")
    assert missed.returncode == 1, missed.stderr
    assert "qcompile: warning: budget not met: sqnr is" in missed.stderr and "below the floor 60" in missed.stderr
    assert (tmp_path / "missed" / "card.json").exists()
    task = qc(*args, "--metric", "accuracy", "--max-drop", "0.01", "-o", tmp_path / "task")
    assert task.returncode == 0 and json.loads((tmp_path / "task" / "card.json").read_text())["budget"]["met"]
    lone = qc(*args, "--metric", "sqnr", "-o", tmp_path / "lone")
    assert lone.returncode == 2 and "a metric needs a bound" in lone.stderr


def test_a_hybrid_search_that_cannot_reach_its_budget_exits_1_and_a_stray_margin_exits_2(tmp_path, rng):
    import onnx_ir as ir

    from tests.passes.test_sensitivity import planted_chain

    ir.save(planted_chain(rng), tmp_path / "planted.onnx")
    np.savez(tmp_path / "calib.npz", x=np.abs(rng.normal(size=(16, 1, 16))).astype(np.float32))
    args = ("compile", tmp_path / "planted.onnx", "--calib", tmp_path / "calib.npz", "--no-latency")
    # float's own max-rel-error is 0: a floor above it cannot be reached, not even with every node float
    missed = qc(*args, "--policy", "hybrid", "--metric", "max-rel-error", "--floor", "0.5", "-o", tmp_path / "out")
    assert missed.returncode == 1, missed.stderr
    assert "warning: the precision search did not reach max-rel-error ≥ 0.5 with its margin 0.103" in missed.stderr
    plan = json.loads((tmp_path / "out" / "plan.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert plan["meta"]["search"]["met"] is False
    stray = qc(*args, "--margin", "2", "-o", tmp_path / "stray")
    assert stray.returncode == 2 and "margin only applies to the search of --policy hybrid or selective" in stray.stderr


@pytest.mark.parametrize("policy", ["hybrid", "selective"])
def test_a_search_out_of_time_keeps_the_best_so_far_and_says_so(tmp_path, rng, policy):
    """A time budget of 0 s: the ranking stops before its first candidate, every group stays int8."""
    import onnx_ir as ir

    from tests.passes.test_sensitivity import planted_chain

    ir.save(planted_chain(rng), tmp_path / "planted.onnx")
    np.savez(tmp_path / "calib.npz", x=np.abs(rng.normal(size=(24, 1, 16))).astype(np.float32))
    args = ("compile", tmp_path / "planted.onnx", "--calib", tmp_path / "calib.npz", "--no-latency")
    cut = qc(*args, "--policy", policy, "--metric", "sqnr", "--floor", "30", "--time-budget", "0", "-o", tmp_path / "o")
    assert "warning: the precision search was cut by its time budget" in cut.stderr
    card = json.loads((tmp_path / "o" / "card.json").read_text())
    assert cut.returncode == (0 if card["budget"]["met"] else 1), cut.stderr  # a cut alone is a warning
    assert card["search"]["cut"] and card["search"]["table"] == [] and card["search"]["float_groups"] == []
    assert "**The search was cut by its time budget**" in (tmp_path / "o" / "card.md").read_text()
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["nodes"]["fc_b"]["reason"] == f"{policy}: int8, not ranked in time"
