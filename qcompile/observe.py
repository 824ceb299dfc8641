"""The worker side of calibration: run one chunk of samples and reduce what it saw.

`observe_chunk` is a plain top-level function of picklable arguments, so any
`concurrent.futures.Executor` can run it: in-process, a process pool, a Dask
client's executor.  A worker keeps one session per model it has seen.

Calibration sessions always run with one intra-op thread: every executor then
computes the same floats, and parallelism comes from running chunks side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompile.calibrators import RangeStat, make_stat
from qcompile.data import Sample
from qcompile.errors import QCompileError
from qcompile.runtime import SessionSource, make_session, run_session

__all__ = ["ChunkObservation", "observe_chunk", "observe_samples", "release_sessions", "CALIBRATION_THREADS"]

CALIBRATION_THREADS = 1
_SESSIONS: dict[SessionSource, object] = {}


@dataclass
class ChunkObservation:
    """Per-tensor statistics, dtypes and shapes of a run of consecutive samples; for the tensors
    asked for, per-channel sums (float64) and how many values each channel summed, and for others
    asked for, per-channel minima and maxima."""

    stats: dict[str, RangeStat] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_samples: int = 0
    channel_sums: dict[str, np.ndarray] = field(default_factory=dict)
    channel_counts: dict[str, int] = field(default_factory=dict)
    channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add_channel_sums(self, name: str, sums: np.ndarray, count: int) -> None:
        """Add per-channel `sums` over `count` values each (sums of another channel count are left
        out: the tensors asked for feed a weight, which fixes the count)."""
        if name not in self.channel_sums:
            self.channel_sums[name], self.channel_counts[name] = sums, count
        elif self.channel_sums[name].shape == sums.shape:
            self.channel_sums[name] = self.channel_sums[name] + sums
            self.channel_counts[name] += count

    def add_channel_range(self, name: str, lo: np.ndarray, hi: np.ndarray) -> None:
        """Widen `name`'s per-channel [lo, hi] (a range of another channel count is left out)."""
        if name not in self.channel_ranges:
            self.channel_ranges[name] = (lo, hi)
        elif self.channel_ranges[name][0].shape == lo.shape:
            old_lo, old_hi = self.channel_ranges[name]
            self.channel_ranges[name] = (np.minimum(old_lo, lo), np.maximum(old_hi, hi))

    def channel_means(self) -> dict[str, np.ndarray]:
        return {k: s / self.channel_counts[k] for k, s in self.channel_sums.items() if self.channel_counts[k]}

    def merge(self, later: ChunkObservation) -> None:
        """Fold in the observation of the samples that came right after these."""
        for name, stat in later.stats.items():
            if name in self.stats:
                self.stats[name].merge(stat)
            else:
                self.stats[name] = stat
        for name, dtype in later.dtypes.items():
            self.dtypes.setdefault(name, dtype)
            self.shapes.setdefault(name, later.shapes[name])
        for name, sums in later.channel_sums.items():
            self.add_channel_sums(name, sums, later.channel_counts[name])
        for name, (lo, hi) in later.channel_ranges.items():
            self.add_channel_range(name, lo, hi)
        self.num_samples += later.num_samples


def _session(source: SessionSource):
    if source not in _SESSIONS:
        _SESSIONS.clear()  # one model at a time per worker
        _SESSIONS[source] = make_session(source, optimize=False, threads=CALIBRATION_THREADS)
    return _SESSIONS[source]


def release_sessions() -> None:
    """Drop this process's cached sessions (their weights can be as large as the model)."""
    _SESSIONS.clear()


def _by_channel(arr: np.ndarray, axis: int) -> np.ndarray:
    """[channels, values]: `arr`'s values of each channel along `axis`."""
    return np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)


def observe_chunk(
    source: SessionSource,
    names: Sequence[str],
    calibrator: str,
    samples: Sequence[Sample],
    first_index: int,
    mean_axes: Mapping[str, int] | None = None,
    range_axes: Mapping[str, int] | None = None,
) -> ChunkObservation:
    """On a worker: run `samples` (numbered from `first_index`) on this process's cached session."""
    return observe_samples(_session(source), names, calibrator, samples, first_index, mean_axes, range_axes)


def observe_samples(
    session: Any,
    names: Sequence[str],
    calibrator: str,
    samples: Sequence[Sample],
    first_index: int,
    mean_axes: Mapping[str, int] | None = None,
    range_axes: Mapping[str, int] | None = None,
) -> ChunkObservation:
    """Run `samples` (numbered from `first_index`), reduce every float tensor into its statistic,
    sum the tensors of `mean_axes` per channel (name → channel axis) and take the minimum and
    maximum per channel of the tensors of `range_axes`."""
    mean_axes, range_axes = mean_axes or {}, range_axes or {}
    obs = ChunkObservation()
    for i, sample in enumerate(samples):
        outputs = run_session(session, sample, names)
        for name, arr in outputs.items():
            arr = np.asarray(arr)
            if arr.size == 0:  # nothing to range over (a value of an If branch that did not run)
                continue
            if name not in obs.dtypes:
                obs.dtypes[name] = arr.dtype.name
                obs.shapes[name] = tuple(arr.shape)
            if arr.dtype.kind != "f":
                continue
            if not np.all(np.isfinite(arr)):
                raise QCompileError(
                    f"tensor {name!r} became NaN or Inf on calibration sample {first_index + i}; "
                    "the float model itself overflows on this input"
                )
            obs.stats.setdefault(name, make_stat(calibrator)).update(arr)
            if name in mean_axes and arr.ndim > (axis := mean_axes[name]):
                per_channel = _by_channel(arr, axis)
                obs.add_channel_sums(name, per_channel.sum(axis=1, dtype=np.float64), per_channel.shape[1])
            if name in range_axes and arr.ndim > (axis := range_axes[name]):
                per_channel = _by_channel(arr, axis)
                obs.add_channel_range(name, per_channel.min(axis=1), per_channel.max(axis=1))
        obs.num_samples += 1
    return obs
