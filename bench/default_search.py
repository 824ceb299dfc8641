"""The precision search at its default settings on a 60-conv detector: how long, how much memory.

The issue's cost target: default settings on a 60-conv detector with 32 calibration samples finish
within 3 minutes on 2 cores.  PP-OCRv4 det and PP-OCRv5 det (62 Convs, 2 ConvTransposes each) on
40 rendered text pages and page scans, 320×320: the first 32 calibrate, the last 8 are held out.
Each policy compiles with the API's defaults and nothing else (no budget: the default one, worst-
channel SQNR ≥ 20 dB; 8 search samples; no time budget; latency measured, so selective's speed
steps run), in a fresh process of its own, so that its wall time and peak RSS are that run's alone.
Naive is the baseline the search's cost is read against.

    python -m bench.default_search [MODEL ...]     → bench/results/default_search.json
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from bench import fresh_process

HERE = Path(__file__).parent
MODELS = ["ppocrv4_det", "ppocrv5_det"]
POLICIES = ("naive", "hybrid", "selective")
PAGES, CALIBRATION = 40, 32


def run_one(name: str, policy: str) -> dict:
    """One compile at default settings, in this process (`main` gives each its own)."""
    import qcompile
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    pages = real_data.detector_samples(n=PAGES)
    calib, held = pages[:CALIBRATION], pages[CALIBRATION:]
    start = time.perf_counter()
    result = qcompile.compile(path, "ort-cpu", calib, held, policy=policy, progress=False)
    seconds = time.perf_counter() - start
    search = result.card.get("search") or {}
    return {
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "calibration_samples": len(calib),
        "held_out_samples": len(held),
        # no budget given: the search aims at the default one (worst-channel SQNR ≥ 20 dB on its samples)
        "metric": search.get("metric"),
        "search_value": search.get("chosen"),
        "search_met": search.get("met"),
        "search_samples": search.get("search_samples"),
        "evaluations": search.get("evaluations"),
        "search_cut": bool(search.get("cut")),
        "float_groups": len(search.get("float_groups") or []),
        "ort_kernels": result.card["ort_kernels"],
        "verdict": [v["problem"] for v in result.card["verdict"]],
    }


def main(names: list[str]) -> None:
    from qcompile.cpu import cpu_info

    out = HERE / "results" / "default_search.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    report.update({"machine": cpu_info().summary(), "date": time.strftime("%Y-%m-%d")})
    for name in names:
        entry = {}
        for policy in POLICIES:
            entry[policy] = fresh_process.run_one("bench.default_search", name, policy)
            print(name, policy, json.dumps(entry[policy])[:300], file=sys.stderr, flush=True)
        for policy in ("hybrid", "selective"):  # the search's cost over the plain compile's, in the same run
            if "seconds" in entry[policy] and "seconds" in entry["naive"]:
                entry[policy]["over_naive"] = entry[policy]["seconds"] / entry["naive"]["seconds"]
        report["models"][name] = entry
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(sys.argv[2], sys.argv[3]), default=float))
    else:
        main(sys.argv[1:] or MODELS)
