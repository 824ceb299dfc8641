"""Single-op float ONNX models for the TFLite lowering tests: (model, input shapes, expected TFLite ops)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

__all__ = ["Case", "CASES", "single_op", "samples_for"]

_rng = np.random.default_rng(7)


@dataclass(frozen=True)
class Case:
    build: Callable[[], ir.Model]
    inputs: dict[str, tuple[int, ...]]
    expect: tuple[str, ...]  # TFLite ops the lowering must emit
    data: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] = field(
        default=lambda rng, shape: rng.normal(size=shape).astype(np.float32)
    )
    target: str = "tflite"


def _w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (_rng.normal(size=shape) * scale).astype(np.float32)


def single_op(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, ...]],
    weights: dict[str, np.ndarray] | None = None,
    outputs: tuple[str, ...] = ("y",),
    opset: int = 17,
    output_shape: tuple | None = None,
) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, output_shape) for n in outputs],
        [onnx.numpy_helper.from_array(a, n) for n, a in (weights or {}).items()],
    )
    proto = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), strict_mode=True
    )
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _node(op: str, inputs: list[str], out: str = "y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], name=f"{op.lower()}_{out}", **attrs)


def _conv(shape, w_shape, expect, act=None, **attrs) -> Case:
    def build() -> ir.Model:
        nodes = [_node("Conv", ["x", "w", "b"], "c" if act else "y", **attrs)]
        if act == "Relu":
            nodes.append(_node("Relu", ["c"]))
        elif act == "Relu6":
            nodes.append(_node("Clip", ["c", "lo", "hi"]))
        weights = {"w": _w(*w_shape), "b": _w(w_shape[0], scale=0.1), "lo": np.float32(0), "hi": np.float32(6)}
        return single_op(nodes, {"x": shape}, weights)

    return Case(build, {"x": shape}, expect)


def _unary(op: str, shape=(1, 4, 5, 6), expect=(), **attrs) -> Case:
    return Case(lambda: single_op([_node(op, ["x"], **attrs)], {"x": shape}), {"x": shape}, expect)


def _binary(op: str, a=(1, 3, 4, 5), b=(1, 3, 4, 5), expect=()) -> Case:
    return Case(lambda: single_op([_node(op, ["a", "b"])], {"a": a, "b": b}), {"a": a, "b": b}, expect)


def _with_consts(nodes, shape, consts, expect, opset: int = 17) -> Case:
    return Case(lambda: single_op(nodes, {"x": shape}, consts, opset=opset), {"x": shape}, expect)


def _i64(*v: int) -> np.ndarray:
    return np.asarray(v, np.int64)


def _positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (np.abs(rng.normal(size=shape)) + 0.05).astype(np.float32)


CASES: dict[str, Case] = {
    "conv_same_relu": _conv((1, 3, 9, 9), (8, 3, 3, 3), ("CONV_2D",), "Relu", pads=[1, 1, 1, 1]),
    "conv_stride2_explicit_pad": _conv(
        (1, 4, 8, 8), (6, 4, 3, 3), ("PAD", "CONV_2D"), strides=[2, 2], pads=[1, 1, 1, 1]
    ),
    "conv_dilated_valid": _conv((1, 2, 11, 10), (4, 2, 3, 3), ("CONV_2D",), dilations=[2, 2]),
    "depthwise_relu6": _conv((1, 6, 7, 7), (6, 1, 3, 3), ("DEPTHWISE_CONV_2D",), "Relu6", group=6, pads=[1, 1, 1, 1]),
    "conv_grouped": _conv((1, 6, 5, 5), (4, 3, 3, 3), ("CONV_2D",), group=2, pads=[1, 1, 1, 1]),
    "depthwise_multiplier": _conv((1, 3, 6, 6), (6, 1, 3, 3), ("DEPTHWISE_CONV_2D",), group=3),
    "conv1d": _conv((1, 4, 20), (5, 4, 3), ("CONV_2D", "RESHAPE"), pads=[1, 1]),
    "conv_transpose": Case(
        lambda: single_op(
            [_node("ConvTranspose", ["x", "w", "b"], strides=[2, 2])],
            {"x": (1, 4, 5, 5)},
            {"w": _w(4, 3, 2, 2), "b": _w(3, scale=0.1)},
        ),
        {"x": (1, 4, 5, 5)},
        ("TRANSPOSE_CONV",),
    ),
    "gemm_relu": Case(
        lambda: single_op(
            [_node("Gemm", ["x", "w", "b"], "g", transB=1), _node("Relu", ["g"])],
            {"x": (1, 16)},
            {"w": _w(10, 16), "b": _w(10, scale=0.1)},
        ),
        {"x": (1, 16)},
        ("FULLY_CONNECTED",),
    ),
    "matmul_3d": Case(
        lambda: single_op([_node("MatMul", ["x", "w"])], {"x": (1, 5, 16)}, {"w": _w(16, 8)}),
        {"x": (1, 5, 16)},
        ("FULLY_CONNECTED",),
    ),
    "batch_matmul": _binary("MatMul", (1, 4, 6), (1, 6, 3), ("BATCH_MATMUL",)),
    "add": _binary("Add", expect=("ADD",)),
    "add_broadcast_const": _with_consts([_node("Add", ["x", "c"])], (1, 3, 4, 5), {"c": _w(3, 1, 1)}, ("ADD",)),
    "sub": _binary("Sub", expect=("SUB",)),
    "mul": _binary("Mul", expect=("MUL",)),
    "max": _binary("Max", expect=("MAXIMUM",)),
    "min": _binary("Min", expect=("MINIMUM",)),
    "relu": _unary("Relu", expect=("RELU",)),
    "sigmoid": _unary("Sigmoid", expect=("LOGISTIC",)),
    "tanh": _unary("Tanh", expect=("TANH",)),
    "hard_swish": _unary("HardSwish", expect=("ADD", "MUL")),  # LiteRT: spelt out, so that XNNPACK takes it
    "hard_swish_tflm": dataclasses.replace(_unary("HardSwish", expect=("HARD_SWISH",)), target="tflm"),
    "leaky_relu": _unary("LeakyRelu", expect=("LEAKY_RELU",), alpha=0.1),
    "prelu": _with_consts([_node("PRelu", ["x", "s"])], (1, 3, 4, 5), {"s": np.abs(_w(3, 1, 1))}, ("PRELU",)),
    "softmax": _unary("Softmax", (1, 10), ("SOFTMAX",)),
    "softmax_axis1_4d": _unary("Softmax", (1, 5, 3, 4), ("SOFTMAX",), axis=1),
    "max_pool_same": _unary(
        "MaxPool", (1, 3, 9, 9), ("MAX_POOL_2D",), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    ),
    "avg_pool": _unary("AveragePool", (1, 3, 8, 8), ("AVERAGE_POOL_2D",), kernel_shape=[2, 2], strides=[2, 2]),
    "global_avg_pool": _unary("GlobalAveragePool", (1, 5, 6, 7), ("MEAN",)),
    "reduce_mean_last": _with_consts(
        [_node("ReduceMean", ["x", "axes"], keepdims=0)], (1, 6, 8), {"axes": _i64(-1)}, ("MEAN",), opset=18
    ),
    "reshape": _with_consts([_node("Reshape", ["x", "s"])], (1, 4, 6), {"s": _i64(1, 24)}, ("RESHAPE",)),
    "flatten": _unary("Flatten", (1, 3, 4, 4), ("RESHAPE",)),
    "concat_channels": Case(
        lambda: single_op([_node("Concat", ["a", "b"], axis=1)], {"a": (1, 2, 4, 4), "b": (1, 3, 4, 4)}),
        {"a": (1, 2, 4, 4), "b": (1, 3, 4, 4)},
        ("CONCATENATION",),
    ),
    "split": Case(
        lambda: single_op(
            [helper.make_node("Split", ["x", "n"], ["y", "z"], name="split", axis=1)],
            {"x": (1, 6, 5)},
            {"n": _i64(2, 4)},
            outputs=("y", "z"),
        ),
        {"x": (1, 6, 5)},
        ("SPLIT_V",),
    ),
    "slice": _with_consts(
        [_node("Slice", ["x", "s", "e", "a"])],
        (1, 6, 8),
        {"s": _i64(1, 2), "e": _i64(5, 7), "a": _i64(1, 2)},
        ("STRIDED_SLICE",),
    ),
    "pad": _with_consts([_node("Pad", ["x", "p"])], (1, 3, 4, 5), {"p": _i64(0, 0, 1, 2, 0, 0, 2, 1)}, ("PAD",)),
    "resize_nearest": dataclasses.replace(
        _with_consts(
            [
                _node(
                    "Resize",
                    ["x", "", "sc"],
                    mode="nearest",
                    coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor",
                )
            ],
            (1, 3, 4, 5),
            {"sc": np.asarray([1, 1, 2, 2], np.float32)},
            ("RESIZE_NEAREST_NEIGHBOR",),
        ),
        target="tflm",  # LiteRT writes whole-factor nearest upsampling as copies (below)
    ),
    "resize_nearest_copies": _with_consts(
        [
            _node(
                "Resize",
                ["x", "", "sc"],
                mode="nearest",
                coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_ceil",
            )
        ],
        (1, 3, 4, 5),
        {"sc": np.asarray([1, 1, 2, 3], np.float32)},
        ("CONCATENATION", "RESHAPE"),
    ),
    "resize_bilinear": _with_consts(
        [_node("Resize", ["x", "", "sc"], mode="linear", coordinate_transformation_mode="half_pixel")],
        (1, 3, 4, 5),
        {"sc": np.asarray([1, 1, 2, 2], np.float32)},
        ("RESIZE_BILINEAR",),
    ),
    "sqrt_lookup_table": Case(
        lambda: single_op([_node("Sqrt", ["x"])], {"x": (1, 3, 4, 5)}),
        {"x": (1, 3, 4, 5)},
        ("CAST", "GATHER"),
        _positive,
    ),
    "exp_lookup_table": _unary("Exp", (1, 10), ("CAST", "ADD", "GATHER")),
    "divide_by_a_tensor": Case(
        lambda: single_op([_node("Div", ["a", "b"])], {"a": (1, 8), "b": (1, 8)}),
        {"a": (1, 8), "b": (1, 8)},
        ("MUL", "GATHER"),
        _positive,
    ),
    "square": _with_consts([_node("Pow", ["x", "two"])], (1, 3, 5), {"two": np.float32(2)}, ("MUL",)),
    "hard_sigmoid": _unary("HardSigmoid", (1, 8, 3, 3), ("ADD", "MUL"), alpha=0.2, beta=0.5),
    "reflect_pad": _with_consts(
        [_node("Pad", ["x", "p"], mode="reflect")], (1, 3, 6), {"p": _i64(0, 0, 2, 0, 0, 3)}, ("MIRROR_PAD",)
    ),
    "conv_clip_saturates": Case(
        lambda: single_op(
            [_node("Conv", ["x", "w"], "c"), _node("Clip", ["c", "lo", "hi"])],
            {"x": (1, 3, 6, 6)},
            {"w": _w(4, 3, 3, 3), "lo": np.float32(0), "hi": np.float32(1.5)},
        ),
        {"x": (1, 3, 6, 6)},
        ("CONV_2D",),
    ),
    "slice_rank5": _with_consts(
        [_node("Slice", ["x", "s", "e", "a"])],
        (1, 4, 3, 2, 5),
        {"s": _i64(1), "e": _i64(2), "a": _i64(2)},
        ("STRIDED_SLICE", "RESHAPE"),
    ),
    "gather_one_index": _with_consts(
        [_node("Gather", ["x", "i"], axis=1)], (2, 5, 4), {"i": np.asarray(3, np.int64)}, ("STRIDED_SLICE", "RESHAPE")
    ),
    "gather": _with_consts([_node("Gather", ["x", "i"], axis=1)], (1, 6, 4), {"i": _i64(0, 5, 2)}, ("GATHER",)),
}


def samples_for(case: Case, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: case.data(rng, shape) for name, shape in case.inputs.items()} for _ in range(n)]
