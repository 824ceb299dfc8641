"""The worker side of calibration: run one chunk of samples and reduce what it saw.

`observe_chunk` is a plain top-level function of picklable arguments, so any
`concurrent.futures.Executor` can run it: in-process, a process pool, a Dask
client's executor.  A worker keeps one session per model it has seen.

Calibration sessions always run with one intra-op thread: every executor then
computes the same floats, and parallelism comes from running chunks side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Per-tensor statistics, dtypes and shapes of a run of consecutive samples."""

    stats: dict[str, RangeStat] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_samples: int = 0

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
        self.num_samples += later.num_samples


def _session(source: SessionSource):
    if source not in _SESSIONS:
        _SESSIONS.clear()  # one model at a time per worker
        _SESSIONS[source] = make_session(source, optimize=False, threads=CALIBRATION_THREADS)
    return _SESSIONS[source]


def release_sessions() -> None:
    """Drop this process's cached sessions (their weights can be as large as the model)."""
    _SESSIONS.clear()


def observe_chunk(
    source: SessionSource, names: Sequence[str], calibrator: str, samples: Sequence[Sample], first_index: int
) -> ChunkObservation:
    """On a worker: run `samples` (numbered from `first_index`) on this process's cached session."""
    return observe_samples(_session(source), names, calibrator, samples, first_index)


def observe_samples(
    session: Any, names: Sequence[str], calibrator: str, samples: Sequence[Sample], first_index: int
) -> ChunkObservation:
    """Run `samples` (numbered from `first_index`) and reduce every float tensor into its statistic."""
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
        obs.num_samples += 1
    return obs
