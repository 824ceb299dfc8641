"""Calibration: observe every float tensor on real data and keep a streaming range.

The float model runs once per sample with every intermediate tensor exposed as
an extra output; each tensor is reduced into its statistic (see
`calibrators`) before the next sample runs, so memory is
O(tensors × histogram bins), independent of the number of samples.

This is an analysis: it never changes the graph.  It fills a
`CalibrationResult` (range, dtype and shape seen per tensor).
`ApplyObservedShapes` then writes the observed dtypes onto values that static
inference left untyped, and the observed shapes into `value.meta`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qcompile.data import Sample
from qcompile.errors import QCompileError
from qcompile.ir_utils import values_by_name
from qcompile.pipeline import CompilePass
from qcompile.runtime import make_session, run_session
from qcompile.passes.calibrators import make_stat

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
    ):
        super().__init__()
        self.result = result
        self.samples = samples
        self.calibrator = calibrator
        self.progress = progress or (lambda it: it)
        try:
            make_stat(calibrator)  # validates the name before any model runs
        except ValueError as e:
            raise QCompileError(str(e)) from e

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = observable_tensors(model)
        session = make_session(model, optimize=False, extra_outputs=names)
        stats: dict[str, object] = {}
        res = self.result
        res.calibrator = self.calibrator
        for sample in self.progress(self.samples):
            outputs = run_session(session, sample, names)
            for name, arr in outputs.items():
                arr = np.asarray(arr)
                if name not in res.dtypes:
                    res.dtypes[name] = arr.dtype.name
                    res.shapes[name] = tuple(arr.shape)
                if arr.dtype.kind != "f":
                    continue
                if not np.all(np.isfinite(arr)):
                    raise QCompileError(
                        f"tensor {name!r} became NaN or Inf on calibration sample {res.num_samples}; "
                        "the float model itself overflows on this input"
                    )
                stats.setdefault(name, make_stat(self.calibrator)).update(arr)
            res.num_samples += 1
        res.ranges = {k: s.range() for k, s in stats.items()}
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
