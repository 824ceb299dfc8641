"""How close quantized outputs are to float: per-output figures, and the metric a budget is set on.

Outputs come stacked over the evaluation samples, `[N, *output_shape]`, or as one array per
sample when shapes vary; figures are taken over all samples together.  Per output:

    SQNR            10·log10(Σ ref² / Σ (ref − q)²)  over the whole tensor (dB)
    channel SQNR    the same per channel (the last axis; axis 1 of an [N, C, H, W] map), over
                    samples and positions; the worst channel with any signal.  A detection
                    head that concatenates boxes
                    (0..320) and class probabilities (0..1) on that axis, or logits whose
                    small classes vanish, hide behind a good whole-tensor SQNR; the worst
                    channel does not.  Probabilities (a Softmax/Sigmoid output) are compared
                    as log(max(p, 1e-6)): losing the small ones is what int8 does to them.
    cosine, max abs error, max relative error = max|ref − q| / max|ref|
    agreement       share of samples with the same argmax, for class scores [N, 1, K];
                    per position for sequence scores [N, 1, T, C] (a CTC recognizer)

The default budget metric, `fidelity`, is the smallest channel SQNR over all outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.quant_math import sqnr_db

__all__ = ["OutputKind", "output_kinds", "OutputFigures", "output_figures", "channel_sqnr_db", "fidelity_db",
           "BUILTIN_METRICS", "COLLAPSE"]  # fmt: skip

_PROBABILITY_OPS = ("Softmax", "Sigmoid", "HardSigmoid")
_DISTRIBUTION_OPS = ("Softmax", "LogSoftmax")
_LOGIT_OPS = ("Gemm", "MatMul", "Add")
_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast")
# a compile is called collapsed when an output falls below these
COLLAPSE = {"sqnr_db": 10.0, "cosine": 0.9, "agreement": 0.9}


@dataclass(frozen=True)
class OutputKind:
    """What an output holds, read off the float graph: probabilities, scores to take an argmax of."""

    probabilities: bool = False  # made by Softmax/Sigmoid
    scores: bool = False  # an argmax over its last axis means something (class or per-position scores)
    feeds: str | None = None  # the input it is carried into at the next step of a stream (`qcompile.streams`)


def _source_op(value: ir.Value) -> str | None:
    node = value.producer()
    while node is not None and node.op_type in _PASS_THROUGH and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    return node.op_type if node is not None else None


def output_kinds(model: ir.Model) -> dict[str, OutputKind]:
    """Each graph output's kind.  Scores: made by Softmax/LogSoftmax, or logits (Gemm/MatMul/Add)
    of rank ≤ 3 with at least 10 entries on the last axis, unlike a 4-value box regression.
    (A transformer's hidden state ends in LayerNormalization in the prepared graph: not logits.)"""
    kinds = {}
    for value in model.graph.outputs:
        op = _source_op(value)
        shape = value.shape
        rank = len(shape) if shape is not None else None
        last = shape[-1] if shape is not None and rank else None
        logits = op in _LOGIT_OPS and isinstance(last, int) and last >= 10 and rank is not None and rank <= 3
        kinds[value.name or ""] = OutputKind(op in _PROBABILITY_OPS, op in _DISTRIBUTION_OPS or logits)
    return kinds


Outputs = np.ndarray | Sequence[np.ndarray]  # stacked [N, ...], or one array per sample (dynamic shapes)


def _rows(arrays: Outputs, image_like: bool = True) -> np.ndarray:
    """All samples as rows of the channel axis: [M, channels] (float64).  The channel axis is the
    last one, but axis 1 of an image-like output [N, C, H, W...] (not of scores, whose classes are
    last); a scalar output is one column."""
    parts = [np.asarray(a, np.float64) for a in (arrays if isinstance(arrays, (list, tuple)) else [arrays])]
    parts = [np.moveaxis(p, 1, -1) if image_like and p.ndim >= 4 else p for p in parts]
    rows = [p.reshape(-1, p.shape[-1] if p.ndim else 1) for p in parts if p.size]
    return np.concatenate(rows) if rows else np.zeros((0, 1))


def channel_sqnr_db(ref: Outputs, got: Outputs, kind: OutputKind = OutputKind()) -> float:
    """The worst per-channel SQNR over the last axis (see the module docstring)."""
    ref2, got2 = _rows(ref, not kind.scores), _rows(got, not kind.scores)
    if kind.probabilities:
        ref2, got2 = np.log(np.clip(ref2, 1e-6, None)), np.log(np.clip(got2, 1e-6, None))
    if ref2.size == 0:
        return math.inf
    power = np.sum(ref2**2, axis=0)
    noise = np.sum((ref2 - got2) ** 2, axis=0)
    live = power > 0
    if not live.any():
        return sqnr_db(ref2, got2)
    with np.errstate(divide="ignore"):
        per_channel = 10 * np.log10(power[live] / noise[live])
    return float(np.min(per_channel))


def _agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of rows (samples, or positions of a sequence) whose argmax agrees."""
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))


@dataclass
class OutputFigures:
    name: str
    sqnr_db: float
    channel_sqnr_db: float
    cosine: float
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None = None  # class scores: per sample; sequence scores: per position


def output_figures(name: str, ref: Outputs, got: Outputs, kind: OutputKind) -> OutputFigures:
    r, g = _rows(ref, not kind.scores), _rows(got, not kind.scores)
    diff = float(np.max(np.abs(r - g))) if r.size else 0.0
    peak = float(np.max(np.abs(r))) if r.size else 0.0
    agree = _agreement(r, g) if kind.scores and r.shape[-1] > 1 else None
    relative = diff / peak if peak else (0.0 if diff == 0 else math.inf)
    return OutputFigures(name, sqnr_db(r, g), channel_sqnr_db(r, g, kind), cosine(r, g), diff, relative, agree)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _is_float(arrays: Outputs) -> bool:
    first = arrays[0] if isinstance(arrays, (list, tuple)) and arrays else arrays
    return np.asarray(first).dtype.kind == "f"


def fidelity_db(ref: Mapping[str, Outputs], got: Mapping[str, Outputs], kinds: Mapping[str, OutputKind]) -> float:
    """The default budget metric: the smallest channel SQNR over all float outputs (dB)."""
    values = [channel_sqnr_db(ref[n], got[n], kinds.get(n, OutputKind())) for n in ref if _is_float(ref[n])]
    if not values:
        raise QCompileError("metric 'fidelity' has nothing to measure: no float output")
    return min(values)


def _per_output(figure: str):
    def metric(ref, got, kinds, output: str | None = None) -> float:
        names = [output] if output else [n for n in ref if _is_float(ref[n])]
        values = [getattr(output_figures(n, ref[n], got[n], kinds.get(n, OutputKind())), figure) for n in names]
        values = [v for v in values if v is not None]
        if not values:
            what = "no output of class scores" if figure == "top1_agreement" else "no float output"
            raise QCompileError(f"metric {figure!r} has nothing to measure: {what}")
        if figure == "max_rel_error":
            return -max(values, default=0.0)  # higher is better
        return min(values, default=math.inf)

    return metric


# name → metric(float outputs, quantized outputs, kinds, output=None) -> float, higher is better
BUILTIN_METRICS = {
    "fidelity": lambda ref, got, kinds, output=None: fidelity_db({output: ref[output]} if output else ref, got, kinds),
    "sqnr": _per_output("sqnr_db"),
    "cosine": _per_output("cosine"),
    "top1": _per_output("top1_agreement"),
    "max-rel-error": _per_output("max_rel_error"),
}
