"""Streaming range statistics: memory per tensor is constant, never per sample.

Each statistic has `update(x)`, `range()` and `merge(later)`: `a.merge(b)`
folds in the statistic of samples that came after a's, so chunks observed on
different workers combine, in chunk order, into one deterministic result.

- `MinMaxStat`: running min and max.
- `EmaMinMaxStat`: exponential moving average of per-batch min and max,
  lo ← (1-m)·lo + m·batch_lo (the first batch initialises).  After n batches
  started from x₁, E = (1-m)^(n-1)·x₁ + Σ_{i≥2} m(1-m)^(n-i)·x_i, so a later
  chunk b merges as E ← (1-m)^n_b · (E_a − x₁_b) + E_b.
- `HistogramStat`: a histogram of `bins` bins of width w = 2^k, on absolute bin
  indices i = floor(x / w).  When new data falls outside the window, w doubles
  and bin i merges into bin floor(i / 2): exact re-binning, no resampling.  The
  range is the (100-p)th and p-th percentile, each within one bin width.
  Two histograms merge exactly: the finer one is coarsened to the other's
  width, then the counts are added on the common window.
- `mse` and `entropy`: the same histogram, read as the clipping range of least
  quantization error or of least KL divergence (`qcompile.clip_ranges`).
  `HistogramStat.range_by(name)` reads any of minmax, percentile, mse and
  entropy off one histogram: the selective policy's per-tensor choice.

Hand-written because merging is the point: ONNX Runtime's calibrators cannot
merge statistics computed on different workers in a fixed order, and its
percentile calibrator took 15 GB for 48 images on a ResNet-50 (measured here);
these hold tensors × bins, whatever the number of samples.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from qcompile.clip_ranges import entropy_range, mse_range
from qcompile.errors import QCompileError

__all__ = ["check_calibrator", "RangeStat", "MinMaxStat", "EmaMinMaxStat", "HistogramStat", "MseStat", "EntropyStat",
           "CALIBRATORS", "HISTOGRAM_CALIBRATORS", "check_histogram_calibrator", "make_stat"]  # fmt: skip


class RangeStat(Protocol):
    """A streaming statistic of one tensor: fed batch by batch, merged in order, read as a range."""

    def update(self, x: np.ndarray) -> None: ...

    def merge(self, later: Any) -> None: ...

    def range(self) -> tuple[float, float]: ...


class MinMaxStat:
    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return (self.lo, self.hi) if self.lo <= self.hi else (0.0, 0.0)

    def merge(self, later: MinMaxStat) -> None:
        self.lo, self.hi = min(self.lo, later.lo), max(self.hi, later.hi)


class EmaMinMaxStat:
    def __init__(self, momentum: float = 0.1) -> None:
        self.momentum = momentum
        self.lo = self.hi = 0.0
        self.first = (0.0, 0.0)  # (lo, hi) of the first batch, for merging
        self.batches = 0  # batches seen; lo, hi and first are meaningful once it is positive

    def update(self, x: np.ndarray) -> None:
        if not x.size:
            return
        lo, hi = float(x.min()), float(x.max())
        self.batches += 1
        if self.batches == 1:
            self.lo, self.hi = lo, hi
            self.first = (lo, hi)
            return
        m = self.momentum
        self.lo = (1 - m) * self.lo + m * lo
        self.hi = (1 - m) * self.hi + m * hi

    def range(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def merge(self, later: EmaMinMaxStat) -> None:
        if not later.batches:
            return
        if not self.batches:
            self.lo, self.hi, self.first, self.batches = later.lo, later.hi, later.first, later.batches
            return
        decay = (1 - self.momentum) ** later.batches
        self.lo = decay * (self.lo - later.first[0]) + later.lo
        self.hi = decay * (self.hi - later.first[1]) + later.hi
        self.batches += later.batches


class HistogramStat:
    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.origin = 0  # absolute index of counts[0]
        self.log2_width = 0  # bin width 2^log2_width, chosen by the first non-empty batch
        self.started = False
        self.exact = MinMaxStat()

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.log2_width)

    def _index(self, v: float) -> int:
        return math.floor(v / self.width)

    def _coarsen(self) -> None:
        """Double the bin width: absolute bin i → floor(i / 2)."""
        occupied = np.nonzero(self.counts)[0]
        new_origin = self.origin // 2
        merged = np.zeros_like(self.counts)
        np.add.at(merged, (self.origin + occupied) // 2 - new_origin, self.counts[occupied])
        self.counts, self.origin = merged, new_origin
        self.log2_width += 1

    def _fit(self, lo: float, hi: float) -> None:
        if not self.started:
            self.started = True
            span = max(hi - lo, abs(hi), abs(lo), 1e-30)
            self.log2_width = math.ceil(math.log2(span / (self.bins - 2)))
            self.origin = self._index(lo)
            return
        while True:
            occupied = np.nonzero(self.counts)[0]
            # Python ints: a first batch of zeros makes bins so fine that later indices pass 2^63
            first = min(self._index(lo), self.origin + (int(occupied[0]) if occupied.size else 0))
            last = max(self._index(hi), self.origin + (int(occupied[-1]) if occupied.size else 0))
            if last - first < self.bins:
                break
            self._coarsen()
        if first < self.origin or last >= self.origin + self.bins:
            shifted = np.zeros_like(self.counts)
            occupied = np.nonzero(self.counts)[0]
            shifted[occupied + self.origin - first] = self.counts[occupied]
            self.counts, self.origin = shifted, first

    def update(self, x: np.ndarray) -> None:
        if not x.size:
            return
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        self.exact.update(x)
        self._fit(lo, hi)
        idx = np.floor(x.astype(np.float64) / self.width).astype(np.int64) - self.origin
        self.counts += np.bincount(idx, minlength=self.bins)[: self.bins]

    def merge(self, later: HistogramStat) -> None:
        if not later.started:
            return
        if not self.started:
            self.counts, self.origin, self.log2_width = later.counts.copy(), later.origin, later.log2_width
            self.started = True
            self.exact.merge(later.exact)
            return
        other = HistogramStat(self.percentile, self.bins)
        other.counts, other.origin, other.log2_width = later.counts.copy(), later.origin, later.log2_width
        other.started = True
        while True:
            while other.log2_width < self.log2_width:
                other._coarsen()
            while self.log2_width < other.log2_width:
                self._coarsen()
            occupied = np.nonzero(other.counts)[0]
            if not occupied.size:
                break
            width_before = self.log2_width
            # bin start points map back to the same absolute bins under _index
            self._fit((other.origin + occupied[0]) * self.width, (other.origin + occupied[-1]) * self.width)
            if self.log2_width == width_before:
                np.add.at(self.counts, occupied + other.origin - self.origin, other.counts[occupied])
                break
        self.exact.merge(later.exact)

    def range(self) -> tuple[float, float]:
        total = int(self.counts.sum())
        if total == 0:
            return (0.0, 0.0)
        cum = np.cumsum(self.counts)
        tail = (100.0 - self.percentile) / 100.0 * total
        lo_bin = int(np.searchsorted(cum, tail, side="right"))
        hi_bin = int(np.searchsorted(cum, total - tail, side="left"))
        lo = (self.origin + lo_bin) * self.width
        hi = (self.origin + hi_bin + 1) * self.width
        exact_lo, exact_hi = self.exact.range()
        return max(lo, exact_lo), min(hi, exact_hi)

    def range_by(self, calibrator: str) -> tuple[float, float]:
        """The range `calibrator` (one of `HISTOGRAM_CALIBRATORS`) reads off this histogram."""
        if calibrator == "percentile":
            return HistogramStat.range(self)
        lo, hi = self.exact.range()
        if calibrator == "minmax":
            return lo, hi
        choose = {"mse": mse_range, "entropy": entropy_range}[calibrator]
        return choose(self.counts, self.origin, self.width, lo, hi)


class MseStat(HistogramStat):
    """A finer histogram (8192 bins, 64 KiB per tensor): clipping searches need the bulk resolved
    when a rare outlier sets the span."""

    def __init__(self, percentile: float = 99.99, bins: int = 8192) -> None:
        super().__init__(percentile, bins)

    def range(self) -> tuple[float, float]:
        return self.range_by("mse")


class EntropyStat(MseStat):
    def range(self) -> tuple[float, float]:
        return self.range_by("entropy")


_FACTORIES = {"minmax": MinMaxStat, "ema": EmaMinMaxStat, "percentile": HistogramStat, "mse": MseStat,
              "entropy": EntropyStat}  # fmt: skip
CALIBRATORS = tuple(_FACTORIES)
HISTOGRAM_CALIBRATORS = ("minmax", "percentile", "mse", "entropy")  # all read off one HistogramStat


def check_calibrator(calibrator: str) -> None:
    if calibrator not in _FACTORIES:
        raise QCompileError(f"unknown calibrator {calibrator!r}; known: {', '.join(CALIBRATORS)}")


def check_histogram_calibrator(calibrator: str) -> None:
    """The selective policy reads every range off one histogram: its starting calibrator must be one of those."""
    if calibrator not in HISTOGRAM_CALIBRATORS:
        raise QCompileError(
            f"the selective policy chooses among the calibrators {', '.join(HISTOGRAM_CALIBRATORS)}; "
            f"{calibrator!r} is not one of them"
        )


def make_stat(calibrator: str, **options) -> RangeStat:
    if calibrator not in _FACTORIES:
        raise ValueError(f"unknown calibrator {calibrator!r}; known: {', '.join(CALIBRATORS)}")
    return _FACTORIES[calibrator](**options)
