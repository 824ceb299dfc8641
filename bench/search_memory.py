"""What the precision search holds: the switchable evaluator's float reference, and the compile's peak.

For a real model under `bench.policies`' budget and search settings, one selective compile in this
process: per evaluator the search builds, its samples, probed tensors and the bytes of its float
reference (model outputs on every search sample, probed tensors on the first `PROBE_SAMPLES`), and
the process's peak RSS (VmHWM) at the end.  Prints one JSON line with the machine and writes it to
bench/results/search_memory.json.

    python -m bench.search_memory [MODEL]        # default ppocrv5_rec
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np

import qcompile
from bench.policies import BUDGETS, DEFAULT_BUDGET, SEARCH_SAMPLES, TIME_BUDGETS
from qcompile.cpu import cpu_info
from qcompile.passes import switchable
from tests.support import real_data
from tests.support.real_models import fetch


def _mib(arrays) -> float:
    return sum(np.asarray(a).nbytes for a in arrays) / 2**20


def main(name: str = "ppocrv5_rec") -> None:
    evaluators = []
    build = switchable.Evaluator.__init__

    def recorded(self, *args, **kwargs):  # the real constructor, then what it holds
        build(self, *args, **kwargs)
        evaluators.append({
            "samples": len(self.samples),
            "probes": len(self.probes),
            "reference_mib": _mib(a for runs in self.reference.values() for a in runs),
            "outputs_mib": _mib(a for n in self.outputs for a in self.reference[n]),
        })  # fmt: skip

    switchable.Evaluator.__init__ = recorded
    path = fetch(name)
    calib, held = real_data.split_samples(name, path)
    qcompile.compile(
        path, "ort-cpu", calib, held, policy="selective", search_samples=SEARCH_SAMPLES.get(name),
        time_budget=TIME_BUDGETS.get(name), measure_latency=False, **BUDGETS.get(name, DEFAULT_BUDGET),
    )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"model": name, "evaluators": evaluators, "peak_rss_mib": peak, "machine": cpu_info().summary()}
    print(json.dumps(result))
    (Path(__file__).parent / "results" / "search_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
