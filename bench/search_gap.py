"""Where a search's figure and the held-out figure part: one plan, judged three ways.

For a real model and a search policy, under `bench.policies`' budget for it:

    estimate    the search's own figure: the switchable fake-quant model on the search samples
    compiled    the compiled model on ONNX Runtime, on the same search samples
    held out    the compiled model on ONNX Runtime, on the held-out samples (the card's figure)

estimate − compiled is what the fake-quant estimate misses of the compiled model (scales assigned
again once neighbours are float, ORT's integer kernels); compiled − held out is the difference
between samples.  The search samples are recovered with `qcompile.search_split.SearchSplit`, as
the compile drew them.  Prints one JSON line per model (with the machine).

    python -m bench.search_gap MODEL [POLICY]
"""

from __future__ import annotations

import json
import sys

import onnx_ir as ir
import onnxruntime as ort

import qcompile
from bench.policies import BUDGETS, DEFAULT_BUDGET, SEARCH_SAMPLES, TIME_BUDGETS
from qcompile.budget import Budget, parse_metric, stacked, stacked_labels
from qcompile.cpu import cpu_info
from qcompile.data import LABELS_KEY
from qcompile.metrics import output_kinds
from qcompile.quantize import SEARCH_SAMPLES as DEFAULT_SEARCH_SAMPLES
from qcompile.search_split import SearchSplit
from qcompile.undecided import float_undecided
from tests.support import real_data
from tests.support.real_models import fetch


def _judged(budget: Budget, float_session, quant_session, samples: list[dict], kinds) -> float:
    feeds = [{k: v for k, v in s.items() if k != LABELS_KEY} for s in samples]
    names = [o.name for o in float_session.get_outputs()]
    runs = [(float_session.run(None, f), quant_session.run(None, f)) for f in feeds]
    ref = {n: stacked([f[i] for f, _ in runs]) for i, n in enumerate(names)}
    got = {n: stacked([q[i] for _, q in runs]) for i, n in enumerate(names)}
    return budget.evaluate(ref, got, kinds, stacked_labels(samples)).value


def main(name: str, policy: str = "hybrid") -> None:
    path = fetch(name)
    calib, held = real_data.split_samples(name, path)
    spec = BUDGETS.get(name, DEFAULT_BUDGET)
    if "feedback" in spec:  # its search samples are runs of streams, judged fed forward: not recovered here
        raise SystemExit(f"bench.search_gap does not handle {name}'s streams (feedback)")
    count = SEARCH_SAMPLES.get(name) or DEFAULT_SEARCH_SAMPLES
    result = qcompile.compile(
        path, "ort-cpu", calib, held, policy=policy, search_samples=count, time_budget=TIME_BUDGETS.get(name),
        measure_latency=False, **spec,
    )  # fmt: skip
    kinds = output_kinds(ir.load(str(path)))
    split = SearchSplit(calib, count, float_undecided(ir.load(str(path)), kinds))
    list(split)  # the calibration part streams by; `split.samples` are the search's
    budget = Budget(parse_metric(spec["metric"], task="max_drop" in spec), spec.get("floor"), spec.get("max_drop"))
    f = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    report = {
        "model": name,
        "policy": policy,
        "metric": budget.metric.name,
        "search_samples": len(split.samples),
        # the search's own figure ("chosen" is the compiled model's once the confirm step ran)
        "estimate": (result.card["search"].get("confirmed") or {}).get("estimate", result.card["search"]["chosen"]),
        "compiled_on_search_samples": _judged(budget, f, q, split.samples, kinds),
        "held_out": result.card["budget"]["value"],
        "machine": cpu_info().summary(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
