"""Peak memory of `qcompile compile` (fresh process each, VmHWM) against what it is given.

1. Calibration set size: PP-OCRv4's text detector (a real model, fetched by package
   name) on N = 100, 300, 1000 samples of 3×640×640 (rendered text pages and the
   page scan, as `real_data.detector_samples`), with a fixed 8-sample evaluation
   set; N = 1000 with the default held-out split instead; and N = 1000 with `--jobs 2`,
   where the figure is the summed RSS of the compiling process and its workers, sampled
   every 0.1 s (a sampled peak can only be lower than the true one).
2. Model size: the synthetic MLP of `tests/support/huge_model.py` (9 × 8192²
   float32 = 2.4 GB of external data); peak RSS / model bytes.

Results: bench/results/memory.json, with the machine.  Needs ~10 GB of free disk.

    python -m bench.memory [--samples 100 300 1000] [--skip-huge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qcompile.cpu import cpu_info
from tests.support import real_data
from tests.support.huge_model import compile_peak_rss, write_huge_model
from tests.support.real_models import fetch

HERE = Path(__file__).parent


def _write_detector_samples(path: Path, n: int, seed: int) -> None:
    """n samples written row by row, so that writing 5 GB holds one sample in memory."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 1, 3, 640, 640))
    done = 0
    while done < n:
        batch = real_data.detector_samples(n=min(50, n - done), seed=seed + done, size=640)
        for s in batch:
            arr[done] = s["x"]
            done += 1
        arr.flush()
    del arr


def _timed(argv: list[str]) -> dict:
    t0 = time.perf_counter()
    code, peak, err = compile_peak_rss(argv)
    if code != 0:
        raise SystemExit(f"qcompile failed ({code}): {err.strip().splitlines()[-1] if err.strip() else ''}")
    return {"peak_rss_mib": round(peak / 2**20, 1), "seconds": round(time.perf_counter() - t0, 1)}


def _tree_peak(argv: list[str]) -> dict:
    """Peak of the summed RSS of `qcompile <argv>` and its worker processes, sampled."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qcompile.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:  # a process ended between listing and reading
            pass
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"qcompile failed ({proc.returncode}): {proc.stderr.read().decode()[-300:]}")
    return {"peak_rss_mib": round(peak / 2**20, 1), "seconds": round(time.perf_counter() - t0, 1)}


def calibration_runs(tmp: Path, counts: list[int]) -> list[dict]:
    det = fetch("ppocrv4_det")
    _write_detector_samples(tmp / "eval.npy", 8, seed=10_000)
    runs = []
    for n in counts:
        calib = tmp / f"calib{n}.npy"
        _write_detector_samples(calib, n, seed=0)
        base = ["compile", str(det), "--calib", str(calib), "--no-latency"]  # one process: its VmHWM is all of it
        fixed = ["--eval", str(tmp / "eval.npy")]
        modes = [("fixed eval set", fixed, _timed)]
        if n == max(counts):
            modes += [
                ("held-out split", [], _timed),
                ("fixed eval set, --jobs 2 (process tree)", [*fixed, "--jobs", "2"], _tree_peak),
            ]
        for i, (mode, extra, measure) in enumerate(modes):
            run = {
                "samples": n,
                "evaluation": mode,
                "data_mib": round(calib.stat().st_size / 2**20, 1),
                **measure([*base, *extra, "-o", str(tmp / f"out{n}-{i}")]),
            }
            print(run, flush=True)
            runs.append(run)
        calib.unlink()
    return runs


def huge_run(tmp: Path) -> dict:
    model = write_huge_model(tmp / "huge")
    size = model.stat().st_size + (tmp / "huge" / "model.onnx.data").stat().st_size
    run = _timed(
        [
            "compile",
            str(model),
            "--calib",
            str(tmp / "huge" / "calib.npz"),
            "--no-latency",
            "-o",
            str(tmp / "huge" / "out"),
        ]
    )
    run.update({"model_mib": round(size / 2**20, 1), "ratio": round(run["peak_rss_mib"] * 2**20 / size, 3)})
    print(run, flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--skip-huge", action="store_true")
    args = parser.parse_args()
    result: dict = {
        "machine": {
            **cpu_info().summary(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        }
    }
    with tempfile.TemporaryDirectory(prefix="qcompile-bench-", dir=HERE) as tmp:
        result["calibration_vs_samples"] = calibration_runs(Path(tmp), args.samples)
        if not args.skip_huge:
            result["huge_model"] = huge_run(Path(tmp))
    out = HERE / "results" / "memory.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
