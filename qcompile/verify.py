"""Stage 3, verify: run the compiled model next to its float original on real data.

Per output, over all evaluation samples together:

    SQNR   = 10·log10(Σ ref² / Σ (ref − q)²)   (dB)
    cosine = ⟨ref, q⟩ / (‖ref‖·‖q‖)
    top-1 agreement = share of samples whose argmax over the last axis agrees
                      (for outputs shaped [N, C] with C > 1)

and, when the data carries `labels`, the top-1 accuracy of each model.  `verify` adds
the median latency of both models and the count of integer vs float compute kernels in
the graph ONNX Runtime runs after its own fusions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompile.data import LABELS_KEY, HoldoutSplit, InputSpec, Sample, iter_samples
from qcompile.quant_math import sqnr_db
from qcompile.runtime import SessionSource, fused_op_counts, make_session, median_latency_ms, run_session

__all__ = [
    "OutputMetrics",
    "Fidelity",
    "compare",
    "cosine",
    "EvaluationSet",
    "Verification",
    "verify",
    "integer_kernels",
    "measure_latencies",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _classifier_like(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.shape[0] == 1 and arr.shape[1] > 1


@dataclass
class OutputMetrics:
    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None = None


@dataclass
class Fidelity:
    samples: int
    outputs: list[OutputMetrics]
    float_accuracy: float | None = None
    quant_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _outputs_of(model, samples: Sequence[Sample], progress) -> dict[str, list[np.ndarray]]:
    """Every output of `model` on every sample; the session is gone when this returns."""
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for sample in progress(samples):
        for n, arr in run_session(session, sample, names).items():
            out[n].append(np.asarray(arr, dtype=np.float64))
    return out


def compare(
    float_model: Any,
    quant_model: Any,
    samples: Sequence[Sample],
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Fidelity:
    """Run the float model, then the quantized one (anything `make_session` takes), on `samples`.

    One session exists at a time, so peak memory holds one model's weights, not both.
    """
    progress = progress or (lambda it: it)
    ref = _outputs_of(float_model, samples, progress)
    got = _outputs_of(quant_model, samples, progress)
    names = list(ref)
    count = len(samples)
    labels = [np.ravel(s[LABELS_KEY]) for s in samples if LABELS_KEY in s]
    outputs = []
    for n in names:
        r = np.concatenate([x.ravel() for x in ref[n]])
        q = np.concatenate([x.ravel() for x in got[n]])
        agree = None
        if ref[n] and all(_classifier_like(x) for x in ref[n]):
            agree = float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(ref[n], got[n], strict=True)]))
        outputs.append(
            OutputMetrics(n, sqnr_db(r, q), cosine(r, q), float(np.max(np.abs(r - q))) if r.size else 0.0, agree)
        )
    fid = Fidelity(count, outputs)
    first = names[0]
    if labels and len(labels) == count and all(_classifier_like(x) for x in ref[first]):
        y = np.concatenate(labels)
        fid.float_accuracy = float(np.mean([np.argmax(x) for x in ref[first]] == y))
        fid.quant_accuracy = float(np.mean([np.argmax(x) for x in got[first]] == y))
    return fid


@dataclass(frozen=True)
class EvaluationSet:
    """The samples verification runs on, and where they came from."""

    samples: list[Sample]
    held_out: bool
    source: str

    @classmethod
    def choose(cls, evaluation: Any, split: HoldoutSplit | None, inputs: Sequence[InputSpec]) -> EvaluationSet:
        """`evaluation` when given; else the split's held-out samples (once calibration has consumed it)."""
        if split is None:
            return cls(list(iter_samples(evaluation, list(inputs), what="evaluation data")), False, "evaluation data")
        if split.held:
            return cls(split.held, True, "held-out calibration split")
        return cls(split.first, False, "calibration samples (too few to hold any out)")

    def describe(self) -> dict[str, Any]:
        return {"held_out": self.held_out, "source": self.source, "samples": len(self.samples)}


@dataclass(frozen=True)
class Verification:
    fidelity: Fidelity
    evaluation: EvaluationSet
    ort_kernels: dict[str, int]
    latency_ms: dict[str, dict[str, float]] | None = None


def verify(
    float_ref: SessionSource,
    quant_ref: SessionSource,
    evaluation: EvaluationSet,
    *,
    measure_latency: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Verification:
    """Fidelity on `evaluation`, ORT's kernel choice, and (optionally) the latency of both models."""
    kernels = integer_kernels(quant_ref)
    fidelity = compare(float_ref, quant_ref, evaluation.samples, progress)
    latency = None
    if measure_latency and evaluation.samples:
        latency = measure_latencies(float_ref, quant_ref, evaluation.samples[0])
    return Verification(fidelity, evaluation, kernels, latency)


def integer_kernels(quant: SessionSource) -> dict[str, int]:
    """Integer vs float compute kernels in the graph ORT runs after its own fusions."""
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = Path(tmp) / "optimized.onnx"
        make_session(quant, optimized_model_path=opt_path)
        return fused_op_counts(onnx.load(str(opt_path), load_external_data=False).graph.node)


def measure_latencies(
    float_ref: SessionSource, quant_ref: SessionSource, sample: Sample
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each model with one thread and with ORT's default threads, one session at a time."""
    return {
        kind: {str(t or "default"): median_latency_ms(make_session(ref, threads=t), sample) for t in (1, None)}
        for kind, ref in (("float", float_ref), ("quantized", quant_ref))
    }
