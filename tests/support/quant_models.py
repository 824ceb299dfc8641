"""Tiny quantizable models and the analyses run on them, shared by the quantizing-pass and target tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import NameFixPass

from qcompile.passes.assign_specs import assign_specs
from qcompile.passes.calibrate import ApplyObservedShapes, CalibrationResult, calibrate
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.select_precision import select_precision
from qcompile.plan import QuantPlan
from qcompile.targets import get_target


def conv_model(rng: np.random.Generator) -> ir.Model:
    """x → Conv(+bias) → Relu → MaxPool → Flatten → Gemm → y (graph output) plus a Sigmoid branch."""
    inits = {
        "w": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "fw": (rng.normal(size=(16, 5)) * 0.3).astype(np.float32),
        "fb": rng.normal(size=5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("MaxPool", ["r"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], "fc"),
        helper.make_node("Sigmoid", ["y"], ["s"], "sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 5]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def feeds(rng: np.random.Generator, n: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(n)]


def planned(
    model: ir.Model, samples, *, target="ort-cpu", per_channel=True, pinned=None, **target_options
) -> tuple[QuantPlan, CalibrationResult]:
    """Run the analyses (calibrate, select, assign) and return (plan, calibration)."""
    tgt = get_target(target, **target_options)
    calib = calibrate(model, samples)
    ApplyObservedShapes(calib)(model)
    decisions = select_precision(model, tgt, pinned=pinned)
    return assign_specs(model, tgt, calib, decisions, per_channel=per_channel, pinned=pinned), calib


def gemm_model(rng: np.random.Generator) -> ir.Model:
    """x[1,6] → Gemm(W[5,6]ᵀ, b) → Relu → r (graph output)."""
    inits = {"W": rng.normal(size=(5, 6)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["y"], "fc", transB=1),
        helper.make_node("Relu", ["y"], ["r"], "relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def gemm_reference(
    model_inits: dict[str, np.ndarray], plan: QuantPlan, x: np.ndarray, *, quantize_bias: bool
) -> np.ndarray:
    """Independent numpy simulation of the quantized Gemm→Relu model."""
    from qcompile.quant_math import INT_RANGES, dequantize, quantize

    def fq(name, arr):
        s = plan.tensors[name]
        q = quantize(arr, s.scale_array(), s.zero_point_array(), INT_RANGES[s.dtype], axis=s.axis)
        return dequantize(q, s.scale_array(), s.zero_point_array(), axis=s.axis)

    xq, wq = fq("x", x), fq("W", model_inits["W"])
    b = model_inits["b"].astype(np.float64)
    if quantize_bias:
        sb = plan.tensors["b"].scale_array().astype(np.float64)
        b = np.rint(b / sb) * sb
    y = xq.astype(np.float64) @ wq.T.astype(np.float64) + b
    return fq("r", np.maximum(y, 0).astype(np.float32))


def _branch(name: str, convs: list[tuple[str, str]], x: str, out: str, extra: list | None = None):
    """Conv → Relu → ... → Conv (weights read from the outer scope), as an If branch."""
    nodes, current = [], x
    for i, (w, b) in enumerate(convs):
        last = i == len(convs) - 1
        conv_out = out if last else f"{name}_c{i}"
        nodes.append(helper.make_node("Conv", [current, w, b], [conv_out], f"{name}_conv{i}", pads=[1, 1, 1, 1]))
        if not last:
            nodes.append(helper.make_node("Relu", [conv_out], [f"{name}_r{i}"], f"{name}_relu{i}"))
            current = f"{name}_r{i}"
    nodes += extra or []
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def if_model(rng: np.random.Generator, nested: bool = False, loud: float = 1.0) -> ir.Model:
    """y = If(mode == 1, then: Conv → Relu → Conv, else: Conv) on x [1, 4, 8, 8], the way silero VAD
    keeps its whole network inside an If on its sample rate; weights live in the main graph.
    With `nested`, the then-branch's last Conv sits in an If of its own (on the same condition).
    The first Conv's weights on input channel 0 are divided by `loud`, for inputs whose channel 0
    is `loud` times the others (`if_feeds`): every channel then matters as much, but one int8
    scale for x cannot serve them all."""
    inits = {}
    for w in ("w0", "w1", "w2"):
        inits[w] = (rng.normal(size=(4, 4, 3, 3)) * 0.3).astype(np.float32)
        inits["b" + w[1]] = rng.normal(size=4).astype(np.float32)
    inits["w0"][:, 0] /= loud
    if nested:
        inner_then = _branch("inner_then", [("w1", "b1")], "then_r0", "inner_y")
        inner_else = _branch("inner_else", [("w2", "b2")], "then_r0", "inner_y2")
        inner = helper.make_node("If", ["cond"], ["then_y"], "inner_if", then_branch=inner_then, else_branch=inner_else)
        then = _branch(
            "then",
            [("w0", "b0")],
            "x",
            "then_c0",
            [helper.make_node("Relu", ["then_c0"], ["then_r0"], "then_relu0"), inner],
        )
        then.output[0].name = "then_y"
    else:
        then = _branch("then", [("w0", "b0"), ("w1", "b1")], "x", "then_y")
    other = _branch("else", [("w2", "b2")], "x", "else_y")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one"], "one", value=numpy_helper.from_array(np.array(1, np.int64))),
            helper.make_node("Equal", ["mode", "one"], ["cond"], "is_one"),
            helper.make_node("If", ["cond"], ["y"], "branch", then_branch=then, else_branch=other),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def if_feeds(rng: np.random.Generator, n: int = 8, mode: int = 1, loud: float = 1.0) -> list[dict[str, np.ndarray]]:
    """Inputs for `if_model`; channel 0 of x is `loud` times the others (a planted sensitive input)."""
    gain = np.array([loud, 1, 1, 1], np.float32)[None, :, None, None]
    return [
        {"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32) * gain, "mode": np.array(mode, np.int64)}
        for _ in range(n)
    ]


def loop_model(rng: np.random.Generator, width: int = 16) -> ir.Model:
    """y = Loop n times: acc ← Tanh(MatMul(acc, w) + b), from acc = x [1, width]; the weights live in
    the main graph and are read from the loop body."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c"], ["c_out"], "keep_going"),
            helper.make_node("MatMul", ["acc", "w"], ["h"], "body_matmul"),
            helper.make_node("Add", ["h", "b"], ["hb"], "body_add"),
            helper.make_node("Tanh", ["hb"], ["acc_out"], "body_tanh"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1, width]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, width]),
        ],
    )
    inits = {
        "w": (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32),
        "b": (rng.normal(size=width) * 0.1).astype(np.float32),
        "go": np.array(True),
    }
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "go", "x"], ["y"], "loop", body=body)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width]),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    NameFixPass()(model)
    return model


def loop_feeds(rng: np.random.Generator, n: int = 8, width: int = 16, steps: int = 3) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.normal(size=(1, width)).astype(np.float32), "n": np.array(steps, np.int64)} for _ in range(n)]
