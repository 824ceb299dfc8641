"""The TFLite graph a lowering builds: tensors, operators, inputs and outputs, as plain data.

Free of the flatbuffer schema, so that the lowering and its tests read as arithmetic;
`tflite_writer` turns a `TflGraph` into a `.tflite` file.  Enum-valued options (padding,
fused activation) are held by their schema names ("SAME", "RELU6").

A tensor's quantization maps its integers q to reals r = scale · (q − zero_point), per
tensor, or per slice along `axis` (per channel).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TflQuant", "TflTensor", "TflOp", "TflGraph", "NUMPY_DTYPES", "OMITTED", "INT_BOUNDS"]

NUMPY_DTYPES = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}
OMITTED = -1  # an optional operator input left out
INT_BOUNDS = {"int8": (-128, 127), "int16": (-32768, 32767)}  # the integer types of TFLite activations


@dataclass(frozen=True)
class TflQuant:
    """scale and zero point, one each per tensor or per slice along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @classmethod
    def of(cls, scale: Any, zero_point: Any, axis: int = 0) -> TflQuant:
        s = np.atleast_1d(np.asarray(scale, np.float32)).reshape(-1)
        z = np.atleast_1d(np.asarray(zero_point, np.int64)).reshape(-1)
        if z.size == 1 and s.size > 1:
            z = np.repeat(z, s.size)
        return cls(tuple(float(v) for v in s), tuple(int(v) for v in z), axis)

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def scale_array(self) -> np.ndarray:
        return np.asarray(self.scale, np.float32)


@dataclass
class TflTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: TflQuant | None = None
    data: np.ndarray | None = None  # constants only

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype} not in {sorted(NUMPY_DTYPES)}")
        if self.data is not None:
            self.data = np.ascontiguousarray(self.data, NUMPY_DTYPES[self.dtype])
            self.shape = tuple(self.data.shape)


@dataclass
class TflOp:
    code: str  # BuiltinOperator name: "CONV_2D", "FULLY_CONNECTED", ...
    inputs: list[int]
    outputs: list[int]
    options: str | None = None  # BuiltinOptions name: "Conv2DOptions", ...
    fields: dict[str, Any] = field(default_factory=dict)  # the options' fields, by their schema names
    source: str = ""  # the ONNX node it lowers


@dataclass
class TflGraph:
    tensors: list[TflTensor] = field(default_factory=list)
    ops: list[TflOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    signature: dict[str, list[str]] = field(default_factory=lambda: {"inputs": [], "outputs": []})

    def add(self, tensor: TflTensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def constant(self, name: str, data: np.ndarray, dtype: str, quant: TflQuant | None = None) -> int:
        return self.add(TflTensor(name, tuple(np.shape(data)), dtype, quant, np.asarray(data)))

    def emit(self, code: str, inputs: list[int], outputs: list[int], options: str | None = None, **fields) -> TflOp:
        op = TflOp(code, list(inputs), list(outputs), options, dict(fields))
        self.ops.append(op)
        return op

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.code for op in self.ops))

    def dtype_of(self, index: int) -> str:
        return self.tensors[index].dtype
