"""An accuracy budget: a metric of the quantized model's outputs, and the bound it must keep.

A metric is higher-is-better and one of two kinds:

- comparison, `metric(float_outputs, quantized_outputs) -> float`, with a `floor` it must stay
  above: the built-ins of `qcompile.metrics` (`fidelity`, the default, `sqnr`, `cosine`, `top1`,
  `max-rel-error`, each optionally for one output, `sqnr:OUTPUT`), or a user function;
- task, `metric(outputs, labels) -> float`, with a `max_drop` from the float model's value:
  `accuracy` (top-1 of the first class-score output), or a user function.

Outputs are dicts of output name → array stacked over the samples, `[N, *output_shape]` (a
list of per-sample arrays where shapes vary).  A user function is named `path/to/file.py:name`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.data import LABELS_KEY
from qcompile.errors import QCompileError
from qcompile.metrics import BUILTIN_METRICS, OutputKind

__all__ = ["Metric", "Budget", "BudgetResult", "parse_metric", "stacked", "stacked_labels", "jackknife_error"]


@dataclass(frozen=True)
class Metric:
    """`fn(a, b, kinds)`: a, b are the float and quantized outputs, or (task) outputs and labels."""

    name: str
    fn: Callable[[Any, Any, Mapping[str, OutputKind]], float]
    task: bool = False
    output: str | None = None  # a built-in metric of one output
    # graded: moves with any change of the output noise (SQNR, cosine, relative error); a count of
    # right answers (top-1 agreement, a task's accuracy) or a user's function may move in steps
    graded: bool = False


def _accuracy(outputs: Mapping[str, Any], labels: np.ndarray, kinds: Mapping[str, OutputKind]) -> float:
    name = next((n for n in outputs if kinds.get(n, OutputKind()).scores), None)
    if name is None:
        raise QCompileError("metric 'accuracy' needs an output of class scores; the model has none")
    predicted = np.array([np.argmax(x) for x in outputs[name]])
    return float(np.mean(predicted == np.ravel(labels)))


def _load_function(spec: str) -> Callable[..., float]:
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise QCompileError(f"metric file {file} does not exist")
    loader = importlib.util.spec_from_file_location(f"qcompile_user_metric_{file.stem}", file)
    if loader is None or loader.loader is None:
        raise QCompileError(f"metric file {file} is not a Python module")
    module = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to see
        raise QCompileError(f"metric file {file} failed to load: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise QCompileError(f"metric file {file} has no function {name!r}")
    return fn


def parse_metric(spec: str | Callable[..., float] | None, *, task: bool = False) -> Metric:
    """A metric from its name (`sqnr`, `sqnr:OUTPUT`, `accuracy`, `file.py:function`) or a callable."""
    if callable(spec) or (spec is not None and ".py:" in spec):
        user = spec if callable(spec) else _load_function(spec)
        name = getattr(spec, "__name__", "metric") if callable(spec) else spec
        return Metric(name, lambda a, b, kinds: user(a, b), task)
    spec = spec or ("accuracy" if task else "fidelity")
    name, _, output = spec.partition(":")
    if task:
        if name != "accuracy":
            raise QCompileError(f"--max-drop needs a task metric: 'accuracy' or file.py:function, got {spec!r}")
        return Metric(name, _accuracy, True)
    if name not in BUILTIN_METRICS:
        known = ", ".join([*BUILTIN_METRICS, "file.py:function"])
        raise QCompileError(f"unknown metric {name!r}; known: {known}")
    builtin = BUILTIN_METRICS[name]
    return Metric(
        spec,
        lambda ref, got, kinds: builtin(ref, got, kinds, output or None),
        output=output or None,
        graded=name != "top1",
    )


def stacked(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """The samples' outputs concatenated on their batch axis ([N, *shape] for batch-1 outputs) when
    they share one shape, else the list."""
    shapes = {np.shape(a) for a in arrays}
    return np.concatenate(arrays) if len(shapes) == 1 and arrays and np.ndim(arrays[0]) else arrays


def stacked_labels(samples: Sequence[Mapping[str, Any]]) -> np.ndarray | list[np.ndarray] | None:
    """Every sample's labels, stacked as outputs are: one class per sample → [N]; a label array per
    sample, [1, L] or [L] (a line's character indices) → [N, L]; shapes that vary → the list.  None
    unless every sample has labels."""
    labels = [np.asarray(s[LABELS_KEY]) for s in samples if LABELS_KEY in s]
    if not labels or len(labels) != len(samples):
        return None
    if all(x.size == 1 for x in labels):
        return np.concatenate([x.ravel() for x in labels])
    if len({x.shape for x in labels}) == 1 and labels[0].ndim and labels[0].shape[0] != 1:
        return np.stack(labels)  # no batch axis of their own
    return stacked(labels)


def _at_most(a: float, b: float) -> bool:
    """a ≤ b, up to the rounding of the arithmetic that made them (a drop of 49/50 from 1 is 0.02)."""
    return a <= b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@dataclass(frozen=True)
class BudgetResult:
    value: float
    float_value: float | None  # task metrics: the float model's own value
    met: bool

    def describe(self, budget: Budget) -> dict[str, Any]:
        bound = {"floor": budget.floor} if budget.floor is not None else {"max_drop": budget.max_drop}
        return {
            "metric": budget.metric.name,
            **bound,
            "value": self.value,
            "float_value": self.float_value,
            "met": self.met,
        }


@dataclass(frozen=True)
class Budget:
    """`metric` ≥ `floor`, or float's task value − the quantized one ≤ `max_drop`."""

    metric: Metric
    floor: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if (self.floor is None) == (self.max_drop is None):
            raise QCompileError("a budget takes either a floor or a max drop, not both")
        if self.max_drop is not None and not self.metric.task:
            raise QCompileError(f"--max-drop needs a task metric (outputs, labels); {self.metric.name!r} is not one")
        if self.floor is not None and self.metric.task:
            raise QCompileError(f"--floor needs a comparison metric; {self.metric.name!r} is a task metric")

    def evaluate(
        self,
        ref: dict,
        got: dict,
        kinds: Mapping[str, OutputKind],
        labels: np.ndarray | list[np.ndarray] | None,
        margin: float = 0.0,
        where: str = "the evaluation data",
    ) -> BudgetResult:
        """The metric on these outputs, and whether it keeps the bound with `margin` to spare."""
        if self.metric.output is not None and self.metric.output not in ref:
            raise QCompileError(
                f"metric {self.metric.name!r} names output {self.metric.output!r}; "
                f"the model's outputs: {', '.join(ref)}"
            )
        if self.metric.task:
            if labels is None:
                raise QCompileError(f"metric {self.metric.name!r} needs labels in {where}")
            float_value = self._call(ref, labels, kinds)
            value = self._call(got, labels, kinds)
            assert self.max_drop is not None
            return BudgetResult(value, float_value, _at_most(float_value - value, self.max_drop - margin))
        value = self._call(ref, got, kinds)
        assert self.floor is not None
        return BudgetResult(value, None, _at_most(self.floor + margin, value))

    def _call(self, a: Any, b: Any, kinds: Mapping[str, OutputKind]) -> float:
        try:
            result = self.metric.fn(a, b, kinds)
        except QCompileError:
            raise
        except Exception as e:  # the user's code
            raise QCompileError(f"metric {self.metric.name!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(result, (int, float, np.floating, np.integer)):
            raise QCompileError(f"metric {self.metric.name!r} returned {result!r}; it must return a number")
        return -math.inf if math.isnan(float(result)) else float(result)  # NaN outputs: as bad as can be


def jackknife_error(
    budget: Budget,
    ref: Mapping[str, list[np.ndarray]],
    got: Mapping[str, list[np.ndarray]],
    kinds: Mapping[str, OutputKind],
    labels: np.ndarray | list[np.ndarray] | None,
    blocks: Sequence[tuple[int, int]] | None = None,
) -> float:
    """How far the budget's quantity (the metric; for a task budget, the drop from float) could move
    on other samples like these: its jackknife standard error over the g groups of per-sample
    outputs `ref`/`got` (each sample its own group, or the [start, stop) `blocks` of samples that
    are not independent of each other, such as the steps of one stream),

        θ_j = the quantity without group j,   SE = sqrt((g − 1)/g · Σ_j (θ_j − mean θ)²)

    (for a mean of per-sample scores, the usual s/√n; over equal blocks, the deviation of the block
    means over √g, which counts a run of correlated steps once; for a pooled figure, such as an
    IoU over all pages, its delete-a-group estimate).  0 with fewer than 3 groups or a non-finite θ_j."""
    n = len(next(iter(ref.values()), []))
    groups = [(i, i + 1) for i in range(n)] if blocks is None else list(blocks)
    if len(groups) < 3:
        return 0.0
    thetas = []
    for group in groups:
        r = {k: stacked(_without(v, group)) for k, v in ref.items()}
        g = {k: stacked(_without(got[k], group)) for k in ref}
        result = budget.evaluate(r, g, kinds, None if labels is None else _without(labels, group))
        thetas.append(result.value - result.float_value if result.float_value is not None else result.value)
    values = np.array(thetas, np.float64)
    if not np.all(np.isfinite(values)):
        return 0.0
    g_count = len(groups)
    return float(np.sqrt((g_count - 1) / g_count * np.sum((values - values.mean()) ** 2)))


def _without(x: Any, group: tuple[int, int]) -> Any:
    """Per-sample `x` (a list, or an array stacked on axis 0) without samples [start, stop)."""
    start, stop = group
    if isinstance(x, list):
        return x[:start] + x[stop:]
    return np.delete(np.asarray(x), np.arange(start, stop), axis=0)
