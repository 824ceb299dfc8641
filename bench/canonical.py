"""The canonical float graph on real models: op counts, float latency, naive int8 latency and fidelity.

For each model: compile with the canonical stage and without it (`canonicalize=False`, the
clean-up passes only), same calibration and held-out data.  Reported per model:
- op counts of the given model, of the clean graph without canonicalization, and of the
  canonical graph;
- median latency at 1 thread (ORT, default optimizations) of the given float model, the
  canonical float model, and the int8 model compiled with and without canonicalization,
  all as ratios to the given float model: ROUNDS interleaved rounds of REPEATS runs each, the
  median round kept, and the given float model's spread over rounds reported as the noise;
- fidelity against the given float model, with and without: the first output's SQNR and the
  task metric of bench/real_fidelity.py (mask IoU, same decoded line, top-1, embedding cosine);
- the same SQNR with the percentile calibrator (min/max ranges follow single outliers, so a
  graph with fewer requantization points can clip them differently);
- the fidelity noise: the SQNR of both compiles over five calibration sets (all samples, one
  left out at either end, every other sample two ways), their means, and the largest spread
  (a model this sensitive to calibration details cannot tell a change smaller than that from
  chance).

Plus `tf2onnx_resnet`: 16 residual blocks of 56×56×64 written as tf2onnx writes a Keras
network (tests/support/residue.py), calibrated on random normal inputs.

    python -m bench.canonical [model ...]      → bench/results/canonical.json
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import qcompile
from bench.real_fidelity import _task_metric
from qcompile.cpu import cpu_info
from qcompile.prepare import prepare
from qcompile.runtime import SessionSource, make_session, median_latency_ms
from qcompile.targets import get_target
from tests.support import real_data
from tests.support.real_models import REAL_MODELS, fetch
from tests.support.residue import tf2onnx_blocks

HERE = Path(__file__).parent
REPEATS = 20
ROUNDS = 5


def _data(name: str):
    if name == "tf2onnx_resnet":
        rng = np.random.default_rng(0)
        samples = [{"input": rng.standard_normal((1, 56, 56, 64)).astype(np.float32)} for _ in range(24)]
        return tf2onnx_blocks(16, hw=56, channels=64), samples
    path = fetch(name)
    samples = [{k: v for k, v in s.items() if k != "labels"} for s in real_data.SAMPLE_BUILDERS[name](path)]
    return onnx.load(str(path)), samples


def _latencies(models: dict[str, object], sample) -> tuple[dict[str, float], float]:
    """Median over interleaved rounds per model (ms), and the first model's spread (max−min)/median."""
    sessions = {k: make_session(m, threads=1) for k, m in models.items()}
    rounds: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for k, session in sessions.items():
            rounds[k].append(median_latency_ms(session, sample, repeats=REPEATS))
    medians = {k: float(np.median(v)) for k, v in rounds.items()}
    first = next(iter(rounds))
    return medians, (max(rounds[first]) - min(rounds[first])) / medians[first]


def _first_sqnr(result) -> float:
    return result.card["fidelity"]["outputs"][0]["sqnr_db"]


def _task(name: str, proto, models: dict, held: list[dict]) -> dict:
    if name not in REAL_MODELS:
        return {}
    float_session = make_session(proto)
    feeds = [{i.name: s[i.name] for i in float_session.get_inputs()} for s in held]
    f_outs = [float_session.run(None, f) for f in feeds]
    out = {}
    for key, model in models.items():
        session = make_session(model)
        out[key] = _task_metric(name, f_outs, [session.run(None, f) for f in feeds])
    return out


def _subset_sqnrs(proto, target, calib, held, canonicalize: bool, full: float) -> list[float]:
    """The first output's SQNR with the whole calibration set (`full`, already measured) and with
    four subsets of it: one sample left out at either end, and every other sample (two ways)."""
    subsets = (calib[1:], calib[:-1], calib[::2], calib[1::2])
    return [full] + [
        _first_sqnr(qcompile.compile(proto, target, s, held, measure_latency=False, canonicalize=canonicalize))
        for s in subsets
    ]


def measure(name: str) -> dict:
    proto, samples = _data(name)
    calib, held = real_data.split(samples)
    target = get_target("ort-cpu")
    plain = prepare(proto, target, canonicalize=False)
    canonical = prepare(proto, target)
    runs = {
        flag: qcompile.compile(proto, target, calib, held, measure_latency=False, canonicalize=flag)
        for flag in (False, True)
    }
    models = {
        "float_given": proto,
        "float_canonical": SessionSource.of(canonical.model),
        "int8_without_canonical": runs[False].model,
        "int8_with_canonical": runs[True].model,
    }
    ms, noise = _latencies(models, held[0])
    subsets = {
        key: _subset_sqnrs(proto, target, calib, held, flag, _first_sqnr(runs[flag]))
        for key, flag in (("without", False), ("with", True))
    }
    return {
        "nodes": {
            "given": sum(canonical.ops_before.values()),
            "clean": sum(plain.ops_after.values()),
            "canonical": sum(canonical.ops_after.values()),
        },
        "ops": {"given": dict(canonical.ops_before), "canonical": dict(canonical.ops_after)},
        "passes": canonical.describe()["passes"],
        "latency_1thread_ms": ms,
        "latency_vs_given_float": {k: v / ms["float_given"] for k, v in ms.items() if k != "float_given"},
        "latency_noise": noise,
        "ort_kernels": {"without": runs[False].card["ort_kernels"], "with": runs[True].card["ort_kernels"]},
        "sqnr_db": {"without": _first_sqnr(runs[False]), "with": _first_sqnr(runs[True])},
        "sqnr_db_calibration_subsets": subsets,
        "sqnr_db_subset_mean": {k: float(np.mean(v)) for k, v in subsets.items()},
        "sqnr_noise_db": max(max(v) - min(v) for v in subsets.values()),
        "sqnr_db_percentile": {
            key: _first_sqnr(
                qcompile.compile(
                    proto, target, calib, held, measure_latency=False, canonicalize=flag, calibrator="percentile"
                )
            )
            for key, flag in (("without", False), ("with", True))
        },
        "task": _task(name, proto, {"without": runs[False].model, "with": runs[True].model}, held),
        "eval_samples": len(held),
    }


def main(names: list[str]) -> None:
    report = {
        "machine": {
            **cpu_info().summary(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "onnxruntime": ort.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "models": {},
    }
    for name in names:
        report["models"][name] = entry = measure(name)
        shown = (
            "nodes",
            "latency_vs_given_float",
            "latency_noise",
            "sqnr_db",
            "sqnr_db_subset_mean",
            "sqnr_noise_db",
            "sqnr_db_percentile",
            "task",
        )
        print(name, json.dumps({k: entry[k] for k in shown}), file=sys.stderr)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "canonical.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tf2onnx_resnet", *REAL_MODELS])
