"""The quantization plan: typed, JSON-serialisable, editable by users.

A `QuantSpec` describes how one tensor is quantized and maps one-to-one onto an
ONNX QuantizeLinear node: real = (q - zero_point) * scale, with `axis` for
per-channel parameters and `block_size` for per-block ones.  A `QuantPlan` maps
tensor names to specs and node names to precision decisions with their reason.

A spec whose `scale` is None is a request ("quantize this tensor as uint16"):
the compiler fills in scale and zero point from calibration.  dtype "float32"
means "leave this tensor in float".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.atomic import atomic_write
from qcompile.errors import QCompileError
from qcompile.quant_math import INT_RANGES

__all__ = ["json_safe", "QuantSpec", "NodeDecision", "QuantPlan", "FLOAT_DTYPES", "QUANT_DTYPES", "PLAN_VERSION"]

PLAN_VERSION = 1
QUANT_DTYPES = tuple(d for d in INT_RANGES if d != "int32") + ("int32",)
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("int8", "int16", "float")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as the string "inf", "-inf" or "nan": strict JSON has no
    Infinity (an SQNR of identical outputs is one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What each JSON field may hold: (test, description for the error message)
_FIELD_KINDS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int?": (lambda v: v is None or _is_int(v), "an integer or null"),
    "number?": (lambda v: v is None or _is_number(v), "a number or null"),
    "numbers?": (
        lambda v: v is None or _is_number(v) or (isinstance(v, list) and all(map(_is_number, v))),
        "a number, a list of numbers or null",
    ),
    "ints?": (
        lambda v: v is None or _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
        "an integer, a list of integers or null",
    ),
}


def _check_fields(data: dict[str, Any], kinds: dict[str, str], where: str) -> None:
    for name, value in data.items():
        test, wanted = _FIELD_KINDS[kinds[name]]
        if not test(value):
            raise QCompileError(f"{where}: field {name!r} must be {wanted}, got {json.dumps(value)[:40]}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized (fields as in ONNX QuantizeLinear)."""

    dtype: str
    scale: tuple[float, ...] | None = None
    zero_point: tuple[int, ...] | None = None
    axis: int | None = None
    block_size: int | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in QUANT_DTYPES + FLOAT_DTYPES:
            raise QCompileError(f"unknown dtype {self.dtype!r}; known: {', '.join(QUANT_DTYPES + FLOAT_DTYPES)}")
        if self.scale is None:
            if self.zero_point is not None:
                raise QCompileError("a spec with a zero_point needs a scale too")
            return
        object.__setattr__(self, "scale", tuple(float(s) for s in np.ravel(self.scale)))
        zp = self.zero_point if self.zero_point is not None else [0] * len(self.scale)
        object.__setattr__(self, "zero_point", tuple(int(z) for z in np.ravel(zp)))
        self._validate()

    def _validate(self) -> None:
        assert self.scale is not None and self.zero_point is not None
        if self.is_float:
            raise QCompileError(f"dtype {self.dtype} is not quantized, so it takes no scale")
        if not self.scale or not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise QCompileError(f"scale must be positive and finite, got {list(self.scale)[:4]}")
        if len(self.zero_point) != len(self.scale):
            raise QCompileError(f"scale has {len(self.scale)} values but zero_point has {len(self.zero_point)}")
        lo, hi = INT_RANGES[self.dtype].qmin, INT_RANGES[self.dtype].qmax
        bad = [z for z in self.zero_point if not lo <= z <= hi]
        if bad:
            raise QCompileError(f"zero_point {bad[0]} is outside the {self.dtype} range [{lo}, {hi}]")
        if len(self.scale) > 1 and self.axis is None and self.block_size is None:
            raise QCompileError(f"{len(self.scale)} scales need an axis (per-channel) or a block_size")
        if self.block_size is not None and self.block_size <= 0:
            raise QCompileError(f"block_size must be positive, got {self.block_size}")

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_resolved(self) -> bool:
        """True when scale and zero point are known (or the tensor stays float)."""
        return self.is_float or self.scale is not None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def scale_array(self) -> np.ndarray:
        assert self.scale is not None
        arr: np.ndarray = np.asarray(self.scale, dtype=np.float32)
        return arr if self.per_channel else arr.reshape(())

    def zero_point_array(self) -> np.ndarray:
        assert self.zero_point is not None
        arr: np.ndarray = np.asarray(self.zero_point, dtype=INT_RANGES[self.dtype].numpy_dtype)
        return arr if self.per_channel else arr.reshape(())

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "spec") -> QuantSpec:
        if not isinstance(data, dict):
            raise QCompileError(f"{where}: expected an object, got {type(data).__name__}")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise QCompileError(f"{where}: unknown field(s) {sorted(unknown)}; known: {list(cls.__dataclass_fields__)}")
        if "dtype" not in data:
            raise QCompileError(f"{where}: missing field 'dtype'")
        _check_fields(data, _SPEC_FIELDS, where)
        try:
            return cls(**data)
        except QCompileError as e:
            raise QCompileError(f"{where}: {e}") from e
        except (TypeError, ValueError) as e:
            raise QCompileError(f"{where}: {e}") from e

    def with_params(self, scale: np.ndarray, zero_point: np.ndarray) -> QuantSpec:
        return replace(self, scale=tuple(np.ravel(scale)), zero_point=tuple(np.ravel(zero_point)))


_SPEC_FIELDS = {
    "dtype": "str",
    "scale": "numbers?",
    "zero_point": "ints?",
    "axis": "int?",
    "block_size": "int?",
    "symmetric": "bool",
}
_DECISION_FIELDS = {"precision": "str", "reason": "str", "score": "number?"}


@dataclass(frozen=True)
class NodeDecision:
    """The precision chosen for one node and why."""

    precision: str
    reason: str = ""
    score: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise QCompileError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")


@dataclass
class QuantPlan:
    """Tensor name → QuantSpec, node name → NodeDecision, plus free-form metadata."""

    tensors: dict[str, QuantSpec] = field(default_factory=dict)
    nodes: dict[str, NodeDecision] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "version": PLAN_VERSION,
            "meta": json_safe(self.meta),
            "nodes": {k: asdict(v) for k, v in sorted(self.nodes.items())},
            "tensors": {k: v.to_dict() for k, v in sorted(self.tensors.items())},
        }
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, source: str = "plan") -> QuantPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise QCompileError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, dict):
            raise QCompileError(f"{source}: expected a JSON object with 'tensors' and 'nodes'")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise QCompileError(
                f"{source}: plan version {data.get('version')!r} is not supported; expected {PLAN_VERSION}"
            )
        tensors = data.get("tensors", {})
        nodes = data.get("nodes", {})
        if not isinstance(tensors, dict) or not isinstance(nodes, dict):
            raise QCompileError(f"{source}: 'tensors' and 'nodes' must be objects keyed by name")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise QCompileError(f"{source}: 'meta' must be an object, got {json.dumps(meta)[:40]}")
        plan = cls(meta=dict(meta))
        for name, spec in tensors.items():
            plan.tensors[name] = QuantSpec.from_dict(spec, where=f"{source}: tensor {name!r}")
        for name, dec in nodes.items():
            if not isinstance(dec, dict) or "precision" not in dec:
                raise QCompileError(f"{source}: node {name!r} needs an object with a 'precision' field")
            unknown = sorted(set(dec) - set(_DECISION_FIELDS))
            if unknown:
                raise QCompileError(
                    f"{source}: node {name!r}: unknown field(s) {unknown}; known: {list(_DECISION_FIELDS)}"
                )
            _check_fields(dec, _DECISION_FIELDS, f"{source}: node {name!r}")
            try:
                plan.nodes[name] = NodeDecision(**dec)
            except TypeError as e:
                raise QCompileError(f"{source}: node {name!r}: {e}") from e
            except QCompileError as e:
                raise QCompileError(f"{source}: node {name!r}: {e}") from e
        return plan

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantPlan:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise QCompileError(f"cannot read plan file {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise QCompileError(f"plan file {path} is not UTF-8 text") from e
        return cls.from_json(text, source=str(path))

    def quantized_tensors(self) -> dict[str, QuantSpec]:
        return {k: v for k, v in self.tensors.items() if not v.is_float}
