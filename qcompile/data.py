"""Calibration and evaluation data: readers and validation at the boundary.

A data source is one of
- a path to an `.npz` whose arrays are named after the model inputs, shaped
  `[N, *input_shape]` (sample i is `arr[i]`; a rank-matching array without the
  extra axis is read as N samples of batch 1), plus an optional `labels` array;
- a `.npy` file (single-input models only), read as an `.npz` with one array;
- a folder of such `.npz` / `.npy` files, read in name order;
- any iterable of `{input_name: array}` dicts.

Files are read one sample at a time (`array_stream`): memory holds one
sample, however large the file.

Every sample is checked against the model's inputs (names, static dims, dtype
kind, finite values) before any model runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qcompile.array_stream import ArrayFormatError, StreamedArray, open_npy, open_npz
from qcompile.errors import QCompileError
from qcompile.ir_utils import name_of

__all__ = ["InputSpec", "Sample", "model_input_specs", "iter_samples", "HoldoutSplit", "LABELS_KEY"]

LABELS_KEY = "labels"
Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in self.shape) + "]"
        )
        return f"{self.name}: {self.dtype.name}{dims}"


def model_input_specs(model: ir.Model) -> list[InputSpec]:
    specs = []
    initializers = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in initializers:
            continue
        dtype = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)
        # a negative dim (some exporters write -1) is as unknown as a symbolic one
        shape = None if v.shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in v.shape)
        specs.append(InputSpec(name_of(v), dtype, shape))
    return specs


def _expected(specs: list[InputSpec]) -> str:
    return "; ".join(s.describe() for s in specs)


def _check_array(arr: np.ndarray, spec: InputSpec, where: str, specs: list[InputSpec]) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype == object:
        raise QCompileError(
            f"{where}: input {spec.name!r} is not a numeric array; the model expects {_expected(specs)}"
        )
    if arr.dtype.kind != spec.dtype.kind and not (arr.dtype.kind in "iu" and spec.dtype.kind in "iu"):
        raise QCompileError(
            f"{where}: input {spec.name!r} has dtype {arr.dtype.name}, the model expects {spec.dtype.name}"
        )
    if spec.shape is not None:
        if arr.ndim != len(spec.shape):
            raise QCompileError(
                f"{where}: input {spec.name!r} has shape {list(arr.shape)}, the model expects {spec.describe()}"
            )
        for got, want in zip(arr.shape, spec.shape, strict=True):
            if want is not None and got != want:
                raise QCompileError(
                    f"{where}: input {spec.name!r} has shape {list(arr.shape)}, the model expects {spec.describe()}"
                )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise QCompileError(f"{where}: input {spec.name!r} contains NaN or Inf")
    return arr.astype(spec.dtype, copy=False)


def _validate(sample: Any, specs: list[InputSpec], where: str) -> Sample:
    if not isinstance(sample, Mapping):
        raise QCompileError(f"{where}: expected a dict of input name → array, got {type(sample).__name__}")
    names = {s.name for s in specs}
    unknown = sorted(set(sample) - names - {LABELS_KEY})
    missing = sorted(names - set(sample))
    if unknown or missing:
        what = f"unknown input(s) {unknown}" if unknown else f"missing input(s) {missing}"
        raise QCompileError(f"{where}: {what}; the model expects {_expected(specs)}")
    out = {s.name: _check_array(np.asarray(sample[s.name]), s, where, specs) for s in specs}
    if LABELS_KEY in sample:
        out[LABELS_KEY] = np.asarray(sample[LABELS_KEY])
    return out


def _read_npz(path: Path, specs: list[InputSpec]) -> dict[str, StreamedArray]:
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise QCompileError(f"data file {path} is a single array, not an .npz archive of named arrays")
    try:
        data = open_npz(path)
    except ArrayFormatError as e:
        raise QCompileError(f"cannot read data file {path}: {e}") from e
    if not data:
        raise QCompileError(f"data file {path} holds no arrays; the model expects {_expected(specs)}")
    return data


def _read_npy(path: Path, specs: list[InputSpec]) -> dict[str, StreamedArray]:
    if len(specs) != 1:
        raise QCompileError(f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs; use .npz")
    try:
        return {specs[0].name: open_npy(path)}
    except ArrayFormatError as e:
        raise QCompileError(f"cannot read data file {path}: {e}") from e


def _array_samples(data: dict[str, StreamedArray], specs: list[InputSpec], path: Path) -> Iterator[Sample]:
    """Samples from named arrays, read a row at a time: `[N, *input_shape]` gives arr[i];
    a rank-matching array gives arr[i:i+1]."""
    counts = set()
    stacked: dict[str, bool] = {}
    for s in specs:
        if s.name not in data:
            raise QCompileError(f"{path}: missing input(s) [{s.name!r}]; the model expects {_expected(specs)}")
        arr = data[s.name]
        stacked[s.name] = s.shape is not None and arr.ndim == len(s.shape) + 1
        counts.add(arr.shape[0] if arr.ndim else 0)
    unknown = sorted(set(data) - {s.name for s in specs} - {LABELS_KEY})
    if unknown:
        raise QCompileError(f"{path}: unknown array(s) {unknown}; the model expects {_expected(specs)}")
    if len(counts) != 1:
        raise QCompileError(f"{path}: inputs disagree on the number of samples: {sorted(counts)}")
    n = counts.pop()
    try:
        labels = data[LABELS_KEY].read_all() if LABELS_KEY in data else None
        if labels is not None and len(labels) != n:
            raise QCompileError(f"{path}: 'labels' has {len(labels)} entries for {n} samples")
        rows = {name: data[name].rows() for name in stacked}
        for i in range(n):
            sample = {k: (next(r) if stacked[k] else next(r)[None]) for k, r in rows.items()}
            if labels is not None:
                sample[LABELS_KEY] = labels[i : i + 1]
            yield _validate(sample, specs, f"{path} sample {i}")
    except ArrayFormatError as e:
        raise QCompileError(f"cannot read data file {path}: {e}") from e


def _file_samples(path: Path, specs: list[InputSpec]) -> Iterator[Sample]:
    read = _read_npy if path.suffix == ".npy" else _read_npz
    yield from _array_samples(read(path, specs), specs, path)


def _folder_samples(path: Path, specs: list[InputSpec]) -> Iterator[Sample]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise QCompileError(f"data folder {path} has no .npz or .npy files")
    for f in files:
        yield from _file_samples(f, specs)


def iter_samples(source: Any, specs: list[InputSpec], *, what: str = "calibration data") -> Iterator[Sample]:
    """Validated samples from any supported source; raises if it yields none."""
    if source is None:
        raise QCompileError(f"no {what} given; the model expects {_expected(specs)}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise QCompileError(f"{what} {path} does not exist")
        gen = _folder_samples(path, specs) if path.is_dir() else _file_samples(path, specs)
    elif isinstance(source, Mapping):
        gen = _validate_each([source], specs, what)
    elif isinstance(source, Iterable):
        gen = _validate_each(source, specs, what)
    else:
        raise QCompileError(
            f"{what}: expected a .npz path, a folder or an iterable of dicts, got {type(source).__name__}"
        )
    count = 0
    for sample in gen:
        count += 1
        yield sample
    if count == 0:
        raise QCompileError(f"{what} is empty; the model expects {_expected(specs)}")


def _validate_each(items: Iterable[Any], specs: list[InputSpec], what: str) -> Iterator[Sample]:
    for i, item in enumerate(items):
        yield _validate(item, specs, f"{what} sample {i}")


class HoldoutSplit:
    """Stream calibration samples while keeping every `every`-th one for evaluation.

    Only the held-out samples are kept in memory, at most `max_holdout` of them
    and at most `max_bytes` together, so a one-shot iterator of any length can
    be split and memory stops growing once the cap is reached (the default
    128 MB holds 26 images of 640×640×3 float32).  Once full, later samples
    all calibrate.

    With `run` > 1 (a recurrent model's streams, `qcompile.streams`), every `every`-th run of
    `run` consecutive samples is held out instead: stretches of streams, not lone steps.
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        every: int = 5,
        max_holdout: int = 200,
        max_bytes: int = 128 * 2**20,
        run: int = 1,
    ):
        self._samples = samples
        self.every, self.run = every, run
        self.max_holdout = max_holdout
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.held: list[Sample] = []
        self.first: list[Sample] = []  # in-sample fallback when nothing could be held out

    def _room_for(self, sample: Sample) -> bool:
        return len(self.held) < self.max_holdout and self.held_bytes + _nbytes(sample) <= self.max_bytes

    def calibration(self) -> Iterator[Sample]:
        last: Sample | None = None
        yielded = 0
        for i, s in enumerate(self._samples):
            if i // self.run % self.every == self.every - 1 and self._room_for(s):
                self.held.append(s)
                self.held_bytes += _nbytes(s)
                continue
            if last is not None:
                yielded += 1
                yield last
            last = s
            if len(self.first) < 8:
                self.first.append(s)
        if last is not None:
            if not self.held and yielded > 0:
                self.held.append(last)  # too few samples to hold any out: keep the last one
            else:
                yield last


def _nbytes(sample: Sample) -> int:
    return sum(np.asarray(a).nbytes for a in sample.values())
