"""A model over 2 GB (external data) compiles with peak memory close to its size, and the
output is written with external data and runs in ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from qcompile.quant_math import sqnr_db
from qcompile.runtime import make_session, run_session
from tests.support.huge_model import compile_peak_rss, write_huge_model

LAYERS = int(os.environ.get("QCOMPILE_HUGE_LAYERS", "9"))  # 9 × 8192² float32 = 2.4 GB


@pytest.mark.slow
def test_model_over_2gb_compiles_with_bounded_memory(tmp_path):
    folder = tmp_path / "huge"
    try:
        model = write_huge_model(folder, layers=LAYERS)
        size = model.stat().st_size + (folder / "model.onnx.data").stat().st_size
        assert LAYERS < 9 or size > 2**31
        out = folder / "out"
        code, peak, err = compile_peak_rss(
            ["compile", str(model), "--calib", str(folder / "calib.npz"), "--no-latency", "-o", str(out)]
        )
        assert code == 0, err
        ratio = peak / size
        print(f"\nhuge model: {size / 1e9:.2f} GB, peak RSS {peak / 1e9:.2f} GB, ratio {ratio:.2f}")
        assert ratio < 1.5, "compiling holds more than one copy of the weights"

        written = out / "model.ort-cpu.onnx"
        assert (out / "model.ort-cpu.onnx.data").stat().st_size > 0
        assert written.stat().st_size < 1_000_000  # the graph only: weights are in the data file
        onnx.checker.check_model(str(written))
        card = json.loads((out / "card.json").read_text())
        assert card["ort_kernels"] == {"integer": LAYERS, "float": 0}

        x = {"x": np.load(folder / "calib.npz")["x"][0]}
        ref = run_session(make_session(model), x)["y"]
        got = run_session(make_session(written), x)["y"]
        assert sqnr_db(ref, got) > 20.0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
