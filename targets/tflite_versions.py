"""Op versions, as TFLite's converter writes them (`tensorflow/lite/tools/versioning/op_version.cc`).

LiteRT refuses an op whose version is above the one it registers (TFLite Micro ignores
versions), so the writer sets the version the converter would set for the same tensor types
and options: the table gives it per (op, activation type), `_ADJUST` holds the rules that
depend on an option, a scale or a granularity.
"""

from __future__ import annotations

from collections.abc import Callable

from qcompile.targets.tflite_graph import TflGraph, TflOp

__all__ = ["op_version", "VERSIONS"]

# (op, type of the first input) -> version; types absent from a row take its "float32" entry
VERSIONS: dict[str, dict[str, int]] = {
    "CONV_2D": {"float32": 1, "int8": 3, "int16": 1},
    "DEPTHWISE_CONV_2D": {"float32": 1, "int8": 3, "int16": 1},
    "FULLY_CONNECTED": {"float32": 1, "int8": 4, "int16": 1},
    "TRANSPOSE_CONV": {"float32": 3, "int8": 3, "int16": 3},  # with a bias input
    "BATCH_MATMUL": {"float32": 1, "int8": 2, "int16": 3},
    "ADD": {"float32": 1, "int8": 2, "int16": 3},  # int16 with pot_scale_int16 off (any scales), as written
    "SUB": {"float32": 1, "int8": 2, "int16": 5},
    "MUL": {"float32": 1, "int8": 2, "int16": 4},
    "MAXIMUM": {"float32": 1, "int8": 2, "int16": 4},
    "MINIMUM": {"float32": 1, "int8": 2, "int16": 4},
    "MAX_POOL_2D": {"float32": 1, "int8": 2, "int16": 3},
    "AVERAGE_POOL_2D": {"float32": 1, "int8": 2, "int16": 3},
    "MEAN": {"float32": 1, "int8": 2, "int16": 3},
    "REDUCE_MAX": {"float32": 1, "int8": 2, "int16": 3},
    "RESHAPE": {"float32": 1},
    "CONCATENATION": {"float32": 1, "int8": 2, "int16": 3},
    "PAD": {"float32": 1, "int8": 2, "int16": 3},
    "PADV2": {"float32": 1, "int8": 2, "int16": 3},
    "MIRROR_PAD": {"float32": 1, "int8": 2, "int16": 3},
    "TRANSPOSE": {"float32": 1, "int8": 2, "int16": 5},
    "STRIDED_SLICE": {"float32": 1, "int8": 2, "int16": 1},
    "SLICE": {"float32": 1, "int8": 2, "int16": 4},
    "SPLIT": {"float32": 1, "int8": 2, "int16": 4},
    "SPLIT_V": {"float32": 1, "int8": 2, "int16": 3},
    "GATHER": {"float32": 1, "int8": 2, "int16": 4},
    "RESIZE_NEAREST_NEIGHBOR": {"float32": 1, "int8": 2, "int16": 4},
    "RESIZE_BILINEAR": {"float32": 1, "int8": 2, "int16": 4},
    "LOGISTIC": {"float32": 1, "int8": 2, "int16": 3},
    "TANH": {"float32": 1, "int8": 2, "int16": 3},
    "SOFTMAX": {"float32": 1, "int8": 2, "int16": 3},
    "HARD_SWISH": {"float32": 1},
    "LEAKY_RELU": {"float32": 1, "int8": 1, "int16": 2},
    "PRELU": {"float32": 1},
    "RELU": {"float32": 1, "int8": 2, "int16": 3},
    "RELU6": {"float32": 1, "int8": 2, "int16": 3},
    "QUANTIZE": {"float32": 1, "int8": 1, "int16": 1},
    "DEQUANTIZE": {"float32": 1, "int8": 2, "int16": 3},
}


def _fully_connected(op: TflOp, graph: TflGraph, version: int) -> int:
    if graph.dtype_of(op.inputs[0]) == "int8" and op.fields.get("keepNumDims"):
        return 5
    return version


def _mul(op: TflOp, graph: TflGraph, version: int) -> int:
    """int8 MUL whose real multiplier s1 · s2 / s_out is ≥ 1 is version 3."""
    quants = [graph.tensors[i].quant for i in (*op.inputs[:2], op.outputs[0])]
    if graph.dtype_of(op.inputs[0]) != "int8" or any(q is None for q in quants):
        return version
    s1, s2, so = (q.scale[0] for q in quants)  # type: ignore[union-attr]
    return 3 if s1 * s2 / so >= 1 else version


def _quantize(op: TflOp, graph: TflGraph, version: int) -> int:
    out = graph.tensors[op.outputs[0]]
    if out.dtype == "int16":
        return 2
    return 3 if out.quant is not None and out.quant.per_channel else 1


def _dequantize(op: TflOp, graph: TflGraph, version: int) -> int:
    q = graph.tensors[op.inputs[0]].quant
    return 5 if q is not None and q.per_channel and graph.dtype_of(op.inputs[0]) == "int8" else version


def _resize(op: TflOp, graph: TflGraph, version: int) -> int:
    if graph.dtype_of(op.inputs[0]) == "int16":
        return version
    if op.fields.get("halfPixelCenters") or (op.code == "RESIZE_NEAREST_NEIGHBOR" and op.fields.get("alignCorners")):
        return 3
    return version


def _depthwise(op: TflOp, graph: TflGraph, version: int) -> int:
    dilated = op.fields.get("dilationWFactor", 1) != 1 or op.fields.get("dilationHFactor", 1) != 1
    return 2 if dilated and graph.dtype_of(op.inputs[0]) != "int8" else version


def _conv(op: TflOp, graph: TflGraph, version: int) -> int:
    """A grouped CONV_2D (filter channels < input channels) is version 6, whatever the types."""
    x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
    return 6 if len(x.shape) == 4 and len(w.shape) == 4 and w.shape[3] != x.shape[3] else version


_ADJUST: dict[str, Callable[[TflOp, TflGraph, int], int]] = {
    "CONV_2D": _conv,
    "FULLY_CONNECTED": _fully_connected,
    "DEPTHWISE_CONV_2D": _depthwise,
    "MUL": _mul,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "RESIZE_BILINEAR": _resize,
    "RESIZE_NEAREST_NEIGHBOR": _resize,
}


def op_version(op: TflOp, graph: TflGraph) -> int:
    row = VERSIONS.get(op.code)
    if row is None:
        return 1
    version = row.get(graph.dtype_of(op.inputs[0]), row["float32"])
    adjust = _ADJUST.get(op.code)
    return adjust(op, graph, version) if adjust else version
