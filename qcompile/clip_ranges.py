"""Clipping ranges read off a streaming histogram: MSE and entropy (KL) calibration.

A `HistogramStat` holds counts n_i on bins of width w with centres x_i.  A candidate range
[a, b] (it always contains 0, as every activation range does once quantized) quantizes to
L = 256 levels of step s = (b − a) / (L − 1).  Candidates shrink the exact range [lo, hi]
by factors α in (0, 1]: both ends together, then the upper end alone, then the lower one
(coordinate descent: a rare outlier on one side must not clip the other).

    MSE       expected squared error per value, Σ n_i·e(x_i) / Σ n_i, with
              e(x) = s²/12 inside [a, b] (uniform rounding) and (x − clip(x))² outside;
              the least error wins.
    entropy   KL(P ‖ Q) as TensorRT's calibrator measures it: P is the histogram over [a, b]
              with the clipped tails added to its edge bins; Q is the histogram over [a, b]
              without them, merged into the L levels and spread evenly back over each
              level's non-empty bins (so clipping shows as P's heavy edges).  The least
              divergence wins; only ranges spanning at least L bins are tried (with fewer,
              the histogram cannot resolve the levels).

Both read the histogram only: memory stays tensors × bins, whatever the number of samples.
Written here because no maintained library computes these from a mergeable histogram
(ONNX Runtime's entropy calibrator keeps its own, per process, unmergeable).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["mse_range", "entropy_range", "LEVELS", "ALPHAS"]

LEVELS = 256
ALPHAS = np.linspace(1.0, 0.02, 99)  # the candidates, largest range first (ties keep the wider)
_EPSILON = 1e-4  # smoothing of Q, as in ONNX Runtime's entropy calibrator


def _bins(counts: np.ndarray, origin: int, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres and counts of the occupied span of the histogram (float64)."""
    occupied = np.nonzero(counts)[0]
    span = slice(occupied[0], occupied[-1] + 1)
    centres = (origin + np.arange(counts.size)[span] + 0.5) * width
    return centres, counts[span].astype(np.float64)


def _best_range(cost: Callable[[float, float], float], lo: float, hi: float) -> tuple[float, float]:
    """The least-cost range: both ends scaled together by α, then the upper end alone, then the
    lower one (a rare outlier on one side must not clip the other).  `cost` is inf for a range
    it cannot judge; ties keep the wider range."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    best, best_cost = (lo, hi), cost(lo, hi)
    for scale_lo, scale_hi in ((True, True), (False, True), (True, False)):
        a0, b0 = best
        for alpha in ALPHAS[1:]:
            a, b = a0 * alpha if scale_lo else a0, b0 * alpha if scale_hi else b0
            c = cost(a, b)
            if c < best_cost:
                best, best_cost = (a, b), c
    return best


def mse_range(counts: np.ndarray, origin: int, width: float, lo: float, hi: float) -> tuple[float, float]:
    """The range of least expected quantization error (see the module docstring)."""
    if not counts.any() or lo == hi:
        return lo, hi
    centres, n = _bins(counts, origin, width)
    centres = np.clip(centres, lo, hi)  # the edge bins' centres may lie past the exact extremes

    def error(a: float, b: float) -> float:
        step = (b - a) / (LEVELS - 1)
        clipped = np.clip(centres, a, b)
        return float(np.sum(n * ((centres - clipped) ** 2 + np.where(centres == clipped, step**2 / 12, 0.0))))

    a, b = _best_range(error, lo, hi)
    return max(a, lo), min(b, hi)


def entropy_range(counts: np.ndarray, origin: int, width: float, lo: float, hi: float) -> tuple[float, float]:
    """The range whose quantized histogram diverges least from the clipped one."""
    if not counts.any() or lo == hi:
        return lo, hi
    centres, n = _bins(counts, origin, width)

    def divergence(a: float, b: float) -> float:
        inside = (centres >= a) & (centres <= b)
        if inside.sum() < LEVELS:
            return np.inf  # too few bins to tell the levels apart
        return _divergence(centres[inside], n, inside, a, b)

    a, b = _best_range(divergence, lo, hi)
    return max(a, lo), min(b, hi)


def _divergence(centres: np.ndarray, n: np.ndarray, inside: np.ndarray, a: float, b: float) -> float:
    """KL(P ‖ Q) for the histogram clipped to [a, b] and its L-level quantization."""
    first, last = np.argmax(inside), len(inside) - 1 - np.argmax(inside[::-1])
    sliced = n[inside]
    p = sliced.copy()
    p[0] += n[:first].sum()
    p[-1] += n[last + 1 :].sum()
    step = (b - a) / (LEVELS - 1)
    level = np.clip(np.rint((centres - a) / step), 0, LEVELS - 1).astype(np.int64)
    nonzero = p > 0
    mass = np.bincount(level, weights=sliced, minlength=LEVELS)
    filled = np.bincount(level, weights=nonzero.astype(np.float64), minlength=LEVELS)
    q = np.where(nonzero, mass[level] / np.maximum(filled[level], 1.0), 0.0)
    q = np.where(nonzero, np.maximum(q, _EPSILON * q.sum()), 0.0)  # a clipped edge bin Q left empty
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
