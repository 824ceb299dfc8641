"""How the precision search's time grows with graph size and with search samples.

Chains of N × (MatMul 64×64 → Relu) under a budget no plan can meet (SQNR ≥ 200 dB), so the
hybrid search does all it can: rank every candidate (two runs each), try each in the greedy
pass, give them back.  Search time = compile time with `policy="hybrid"` minus the naive
compile's, in the same process, on the same data.  Nodes: N = 10 … 80 at 8 search samples;
samples: 4 … 32 at N = 20 (the search sample count patched for the run: a bench knob, not an
option).  Results: bench/results/search_scaling.json, with the machine.

    python -m bench.search_scaling
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

import qcompile
import qcompile.quantize
from bench import scaling

HERE = Path(__file__).parent
WIDTH = 64


def chain(layers: int) -> ir.Model:
    model = scaling.chain(np.random.default_rng(layers), layers, [1, 32, WIDTH], 0.2, opset=21, ir_version=10)
    return ir.from_proto(model)


def search_seconds(layers: int, search_samples: int) -> dict:
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=(1, 32, WIDTH)).astype(np.float32)} for _ in range(2 * search_samples + 8)]
    qcompile.quantize.SEARCH_SAMPLES = search_samples
    times = {}
    for policy in ("naive", "hybrid"):
        start = time.perf_counter()
        result = qcompile.compile(
            chain(layers), calibration=data, policy=policy, metric="sqnr", floor=200, measure_latency=False
        )
        times[policy] = time.perf_counter() - start
    search = result.card["search"]
    return {
        "layers": layers,
        "nodes": 2 * layers,
        "search_samples": search_samples,
        "evaluations": search["evaluations"],
        "search_seconds": round(times["hybrid"] - times["naive"], 2),
        "seconds_per_evaluation": round((times["hybrid"] - times["naive"]) / search["evaluations"], 4),
    }


def main() -> None:
    from qcompile.cpu import cpu_info

    default = qcompile.quantize.SEARCH_SAMPLES
    try:
        by_nodes = [search_seconds(n, default) for n in (10, 20, 40, 80)]
        by_samples = [search_seconds(20, s) for s in (4, 8, 16, 32)]
    finally:
        qcompile.quantize.SEARCH_SAMPLES = default
    for rows in (by_nodes, by_samples):
        for row in rows:
            row["time_ratio"] = round(row["search_seconds"] / rows[0]["search_seconds"], 2)
            print(row, flush=True)
    report = {"machine": cpu_info().summary(), "by_nodes": by_nodes, "by_samples": by_samples}
    (HERE / "results" / "search_scaling.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
