"""The options of a compile, grouped and checked before any model is loaded."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from qcompile.budget import Budget
from qcompile.calibrators import check_calibrator, check_histogram_calibrator
from qcompile.errors import QCompileError
from qcompile.passes.select_precision import check_policy
from qcompile.plan import QuantPlan
from qcompile.targets import Target

__all__ = ["CompileConfig", "Progress"]

Progress = Callable[[Iterable], Iterable]


@dataclass(frozen=True)
class CompileConfig:
    """Everything `compile()` takes besides the model and the data (see its docstring)."""

    target: Target
    plan: QuantPlan | None = None
    per_channel: bool = True
    bias_correction: bool = True  # add back the mean output shift of weight rounding (passes.correct_bias)
    calibrator: str = "minmax"
    policy: str = "naive"
    progress: bool | None = None
    measure_latency: bool = True
    executor: Executor | None = None
    canonicalize: bool = True
    budget: Budget | None = None
    margin: float | None = None  # kept in reserve by the precision search (qcompile.search.default_margin)
    time_budget: float | None = None  # seconds the precision search may take
    search_samples: int | None = None  # calibration samples the search judges on (None: SEARCH_SAMPLES)

    def __post_init__(self) -> None:
        check_calibrator(self.calibrator)
        check_policy(self.policy)
        if self.policy == "selective":
            check_histogram_calibrator(self.calibrator)
        if self.time_budget is not None:
            if self.policy == "naive":
                raise QCompileError("a time budget only applies to the search of --policy hybrid or selective")
            if not math.isfinite(self.time_budget) or self.time_budget < 0:
                raise QCompileError(f"the time budget must be a finite number of seconds ≥ 0, got {self.time_budget}")
        if self.search_samples is not None:
            if self.policy == "naive":
                raise QCompileError("search samples only apply to --policy hybrid or selective, not naive")
            if self.search_samples < 1:
                raise QCompileError(f"the search needs at least 1 sample, got {self.search_samples}")
        if self.margin is not None:
            if self.policy == "naive":
                raise QCompileError("a margin only applies to the search of --policy hybrid or selective, not naive")
            if not math.isfinite(self.margin) or self.margin < 0:
                raise QCompileError(f"the margin must be a finite number ≥ 0, got {self.margin}")

    def progress_bar(self, desc: str, unit: str = "sample") -> Progress:
        """A tqdm wrapper when progress is on (by default: when stderr is a terminal), else the identity."""
        enabled = sys.stderr.isatty() if self.progress is None else self.progress
        if not enabled:
            return lambda it: it
        from tqdm.auto import tqdm

        return lambda it: tqdm(it, desc=desc, unit=unit, leave=False)
