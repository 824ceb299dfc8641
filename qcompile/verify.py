"""Compare a compiled model with its float original on real data.

Per output, over all evaluation samples together:

    SQNR   = 10·log10(Σ ref² / Σ (ref − q)²)   (dB)
    cosine = ⟨ref, q⟩ / (‖ref‖·‖q‖)
    top-1 agreement = share of samples whose argmax over the last axis agrees
                      (for outputs shaped [N, C] with C > 1)

and, when the data carries `labels`, the top-1 accuracy of each model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from qcompile.data import LABELS_KEY, Sample
from qcompile.quant_math import sqnr_db
from qcompile.runtime import run_session

__all__ = ["OutputMetrics", "Fidelity", "compare", "cosine"]


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

    @property
    def worst_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=float("nan"))


def compare(
    float_session: ort.InferenceSession,
    quant_session: ort.InferenceSession,
    samples: Iterable[Sample],
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Fidelity:
    names = [o.name for o in float_session.get_outputs()]
    ref: dict[str, list[np.ndarray]] = {n: [] for n in names}
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    count = 0
    for sample in (progress or (lambda it: it))(samples):
        f_out = run_session(float_session, sample, names)
        q_out = run_session(quant_session, sample, names)
        for n in names:
            ref[n].append(np.asarray(f_out[n], dtype=np.float64))
            got[n].append(np.asarray(q_out[n], dtype=np.float64))
        if LABELS_KEY in sample:
            labels.append(np.ravel(sample[LABELS_KEY]))
        count += 1
    outputs = []
    for n in names:
        r = np.concatenate([x.ravel() for x in ref[n]])
        q = np.concatenate([x.ravel() for x in got[n]])
        agree = None
        if ref[n] and all(_classifier_like(x) for x in ref[n]):
            agree = float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(ref[n], got[n])]))
        outputs.append(OutputMetrics(n, sqnr_db(r, q), cosine(r, q), float(np.max(np.abs(r - q))) if r.size else 0.0, agree))
    fid = Fidelity(count, outputs)
    first = names[0]
    if labels and len(labels) == count and all(_classifier_like(x) for x in ref[first]):
        y = np.concatenate(labels)
        fid.float_accuracy = float(np.mean([np.argmax(x) for x in ref[first]] == y))
        fid.quant_accuracy = float(np.mean([np.argmax(x) for x in got[first]] == y))
    return fid
