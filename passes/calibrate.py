"""Calibration: observe every float tensor on real data and keep a streaming range.

The float model runs once per sample with every intermediate tensor exposed as
an extra output; each tensor is reduced into its statistic (see
`calibrators`) before the next sample runs.  Samples go in fixed chunks of
`chunk_size` to `observe.observe_chunk`, on the caller's
`concurrent.futures.Executor` if one is given (process pool, Dask, ...) or
in-process; chunk observations merge in chunk order, so every executor gives
the same result.  At most `max_in_flight` chunks are pending, so memory is
O(tensors × histogram bins + max_in_flight × chunk_size samples), independent
of the number of samples.

This is an analysis: it never changes the graph.  It fills a
`CalibrationResult` (range, dtype and shape seen per tensor).
`ApplyObservedShapes` then writes the observed dtypes onto values that static
inference left untyped, and the observed shapes into `value.meta`.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import onnx_ir as ir

from qcompile.data import Sample
from qcompile.errors import QCompileError
from qcompile.ir_utils import values_by_name
from qcompile.pipeline import CompilePass
from qcompile.runtime import SessionSource
from qcompile.passes.calibrators import make_stat
from qcompile.passes.observe import ChunkObservation, observe_chunk, release_sessions

__all__ = ["Calibrate", "CalibrationResult", "ApplyObservedShapes", "observable_tensors"]


@dataclass
class CalibrationResult:
    calibrator: str = "minmax"
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_samples: int = 0


def observable_tensors(model: ir.Model) -> list[str]:
    """Graph inputs and node outputs, in graph order (initializers are read directly)."""
    names = [v.name for v in model.graph.inputs if not v.is_initializer()]
    names += [v.name for n in model.graph for v in n.outputs if v.name]
    return list(dict.fromkeys(names))


class Calibrate(CompilePass):
    requires = ("batchnorm_folded", "clean")
    provides = ("calibrated",)
    mutates = False

    def __init__(
        self,
        result: CalibrationResult,
        samples: Iterable[Sample],
        *,
        calibrator: str = "minmax",
        progress: Callable[[Iterable], Iterable] | None = None,
        executor: Executor | None = None,
        chunk_size: int = 8,
        max_in_flight: int = 4,
    ):
        super().__init__()
        self.result = result
        self.samples = samples
        self.calibrator = calibrator
        self.progress = progress or (lambda it: it)
        self.executor = executor
        self.chunk_size = chunk_size
        self.max_in_flight = max_in_flight
        try:
            make_stat(calibrator)  # validates the name before any model runs
        except ValueError as e:
            raise QCompileError(str(e)) from e

    def _chunks(self) -> Iterator[tuple[int, list[Sample]]]:
        it = iter(self.progress(self.samples))
        start = 0
        while chunk := list(islice(it, self.chunk_size)):
            yield start, chunk
            start += len(chunk)

    def _observations(self, source: SessionSource, names: list[str]) -> Iterator[ChunkObservation]:
        """Chunk observations in chunk order, with at most `max_in_flight` submitted and not yet merged."""
        if self.executor is None:
            for start, chunk in self._chunks():
                yield observe_chunk(source, names, self.calibrator, chunk, start)
            return
        pending: deque[Future] = deque()
        try:
            for start, chunk in self._chunks():
                pending.append(self.executor.submit(observe_chunk, source, names, self.calibrator, chunk, start))
                if len(pending) >= self.max_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = observable_tensors(model)
        source = SessionSource.of(model, extra_outputs=names)
        total = ChunkObservation()
        with tempfile.TemporaryDirectory(prefix="qcompile-calib-") as tmp:
            if self.executor is not None:
                source = source.spill(tmp)  # workers read the model from a file, not from every task
            try:
                for obs in self._observations(source, names):
                    total.merge(obs)
            finally:
                release_sessions()
        res = self.result
        res.calibrator = self.calibrator
        res.num_samples = total.num_samples
        res.dtypes, res.shapes = total.dtypes, total.shapes
        res.ranges = {k: s.range() for k, s in total.stats.items()}
        return ir.passes.PassResult(model, False)


class ApplyObservedShapes(CompilePass):
    """Fill dtypes and shapes that static inference could not find from what calibration saw."""

    requires = ("calibrated",)
    provides = ("types_known",)

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
