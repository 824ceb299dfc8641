"""Calibration: observe every float tensor on real data and keep a streaming range.

The float model runs once per sample with every intermediate tensor exposed as
an extra output; each tensor is reduced into its statistic (see
`qcompile.calibrators`) before the next sample runs.  Samples go in fixed
chunks of `chunk_size` to `qcompile.observe.observe_chunk`, on the caller's
`concurrent.futures.Executor` if one is given (process pool, Dask, ...) or
in-process; chunk observations merge in chunk order, so every executor gives
the same result.  At most `max_in_flight` chunks are pending, so memory is
O(tensors × histogram bins + max_in_flight × chunk_size samples), independent
of the number of samples.

`calibrate` is an analysis: it reads the model, never changes it, and returns a
`CalibrationResult` (range, dtype and shape seen per tensor).  The
`ApplyObservedShapes` pass then writes the observed dtypes onto values that
static inference left untyped, and the observed shapes into `value.meta`.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import onnx_ir as ir

from qcompile.calibrators import HISTOGRAM_CALIBRATORS, check_calibrator, check_histogram_calibrator
from qcompile.config import Progress
from qcompile.data import Sample
from qcompile.expose import exposable_values
from qcompile.ir_utils import values_by_name
from qcompile.observe import CALIBRATION_THREADS, ChunkObservation, observe_chunk, observe_samples, release_sessions
from qcompile.runtime import SessionSource, make_session

__all__ = ["calibrate", "CalibrationResult", "ApplyObservedShapes", "observable_tensors"]


@dataclass(frozen=True)
class CalibrationResult:
    """What calibration saw: a float range per tensor, and every observed tensor's dtype and shape."""

    calibrator: str = "minmax"
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    num_samples: int = 0
    # calibrator → tensor → range, for every histogram calibrator (when asked for: the selective policy)
    alternatives: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    # tensor → mean per channel (float64), for the tensors `calibrate` was asked to average
    channel_means: Mapping[str, np.ndarray] = field(default_factory=dict)
    # tensor → (min, max) per channel, for the tensors `calibrate` was asked to range per channel
    channel_ranges: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def observable_tensors(model: ir.Model) -> list[str]:
    """Graph inputs and node outputs, in graph order (initializers are read directly), then the
    float values computed inside If branches (exposed to the session by `qcompile.expose`)."""
    names = [v.name for v in model.graph.inputs if v.name and not v.is_initializer()]
    names += [v.name for n in model.graph for v in n.outputs if v.name]
    names += [v.name for v in exposable_values(model) if v.name]
    return list(dict.fromkeys(names))


def calibrate(
    model: ir.Model,
    samples: Iterable[Sample],
    *,
    calibrator: str = "minmax",
    progress: Progress | None = None,
    executor: Executor | None = None,
    chunk_size: int = 8,
    max_in_flight: int = 4,
    alternatives: bool = False,
    mean_axes: Mapping[str, int] | None = None,
    range_axes: Mapping[str, int] | None = None,
) -> CalibrationResult:
    """Run `samples` through the float `model` and return the range of every float tensor.

    The model is only read.  `calibrator` names the statistic (see `qcompile.calibrators`);
    `executor` runs chunks of `chunk_size` samples, with at most `max_in_flight` pending.
    With `alternatives`, every tensor keeps one histogram and the result holds the range
    of each of `HISTOGRAM_CALIBRATORS` too (`calibrator` must be one of them).  Each tensor of
    `mean_axes` (name → channel axis) also gets its mean per channel over every sample, and each
    of `range_axes` its minimum and maximum per channel.
    """
    check_calibrator(calibrator)  # before any model runs
    if alternatives:
        check_histogram_calibrator(calibrator)
    observed = "entropy" if alternatives else calibrator  # its statistic is the finer histogram
    names = observable_tensors(model)
    source = SessionSource.of(model, extra_outputs=names)
    chunks = _chunks(iter((progress or (lambda it: it))(samples)), chunk_size)
    axes = (dict(mean_axes or {}), dict(range_axes or {}))
    total = ChunkObservation()
    with tempfile.TemporaryDirectory(prefix="qcompile-calib-") as tmp:
        if executor is not None:
            source = source.spill(tmp)  # workers read the model from a file, not from every task
        try:
            for obs in _observations(source, names, observed, chunks, executor, max_in_flight, axes):
                total.merge(obs)
        finally:
            release_sessions()
    others: dict[str, dict[str, tuple[float, float]]] = {}
    if alternatives:
        others = {c: {k: s.range_by(c) for k, s in total.stats.items()} for c in HISTOGRAM_CALIBRATORS}  # type: ignore[attr-defined]
    ranges = others[calibrator] if alternatives else {k: s.range() for k, s in total.stats.items()}
    return CalibrationResult(
        calibrator,
        ranges,
        total.dtypes,
        total.shapes,
        total.num_samples,
        others,
        total.channel_means(),
        total.channel_ranges,
    )


def _chunks(samples: Iterator[Sample], size: int) -> Iterator[tuple[int, list[Sample]]]:
    start = 0
    while chunk := list(islice(samples, size)):
        yield start, chunk
        start += len(chunk)


def _observations(
    source: SessionSource,
    names: list[str],
    calibrator: str,
    chunks: Iterator[tuple[int, list[Sample]]],
    executor: Executor | None,
    max_in_flight: int,
    axes: tuple[dict[str, int], dict[str, int]],
) -> Iterator[ChunkObservation]:
    """Chunk observations in chunk order, with at most `max_in_flight` submitted and not yet merged."""
    if executor is None:  # a session of this call's own: nothing shared with other compiles
        session = make_session(source, optimize=False, threads=CALIBRATION_THREADS)
        for start, chunk in chunks:
            yield observe_samples(session, names, calibrator, chunk, start, *axes)
        return
    pending: deque[Future] = deque()
    try:
        for start, chunk in chunks:
            pending.append(executor.submit(observe_chunk, source, names, calibrator, chunk, start, *axes))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


class ApplyObservedShapes(ir.passes.InPlacePass):
    """Fill dtypes and shapes that static inference could not find from what calibration saw."""

    def __init__(self, result: CalibrationResult):
        super().__init__()
        self.result = result

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        values = values_by_name(model.graph)
        for name, dtype in self.result.dtypes.items():
            v = values.get(name)
            if v is None:
                continue
            if v.dtype is None:
                v.dtype = ir.DataType.from_numpy(np.dtype(dtype))
                modified = True
            # a concrete shape seen on one sample may not hold for others: keep it as metadata
            v.meta["qcompile.observed_shape"] = self.result.shapes[name]
        return ir.passes.PassResult(model, modified)
