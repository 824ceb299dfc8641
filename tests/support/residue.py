"""Small float models with the residue converters leave, built in code (no model files).

- `tf2onnx_blocks`: residual blocks as tf2onnx writes a Keras NHWC network:
  NHWC input → Transpose → Conv → Transpose → Sub/Mul/Add by [C] constants (a decomposed
  BatchNorm) → Relu → Add(residual).
- `paddle_hardswish`: Conv → x·Clip(x + 3, 0, 6)/6 → Conv, as Paddle exports HardSwish.
- `decomposed_layernorm`: MatMul → ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add → MatMul.
- `torch_cast_chain`: Conv → Cast(float→float) → Identity → Cast round trip through double → Conv.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["tf2onnx_blocks", "paddle_hardswish", "decomposed_layernorm", "torch_cast_chain"]


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "residue", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv_weights(rng: np.random.Generator, c_out: int, c_in: int, k: int = 3) -> np.ndarray:
    return (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))).astype(np.float32)


def tf2onnx_blocks(
    blocks: int = 2, hw: int = 8, channels: int = 8, batch: int | str = 1, seed: int = 0, opset: int = 13
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "input"
    for b in range(blocks):
        p = f"block{b}_"
        inits[p + "W"] = _conv_weights(rng, channels, channels)
        inits[p + "B"] = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        inits[p + "mean"] = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        inits[p + "scale"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        inits[p + "shift"] = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        nodes += [
            helper.make_node("Transpose", [x], [p + "nchw"], p + "to_nchw", perm=[0, 3, 1, 2]),
            helper.make_node("Conv", [p + "nchw", p + "W", p + "B"], [p + "conv"], p + "conv", pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", [p + "conv"], [p + "nhwc"], p + "to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Sub", [p + "nhwc", p + "mean"], [p + "centred"], p + "bn_sub"),
            helper.make_node("Mul", [p + "centred", p + "scale"], [p + "scaled"], p + "bn_mul"),
            helper.make_node("Add", [p + "scaled", p + "shift"], [p + "bn"], p + "bn_add"),
            helper.make_node("Relu", [p + "bn"], [p + "relu"], p + "relu"),
            helper.make_node("Add", [p + "relu", x], [p + "out"], p + "residual"),
        ]
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["output"], "output_identity"))
    shape = [batch, hw, hw, channels]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        inits,
        opset,
    )


def paddle_hardswish(channels: int = 4, hw: int = 8, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _conv_weights(rng, channels, 3),
        "w2": _conv_weights(rng, channels, channels),
        "three": np.array(3.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "three"], ["plus3"], "hs_add"),
        helper.make_node("Clip", ["plus3", "zero", "six"], ["relu6"], "hs_clip"),
        helper.make_node("Mul", ["c1", "relu6"], ["prod"], "hs_mul"),
        helper.make_node("Div", ["prod", "six"], ["hs"], "hs_div"),
        helper.make_node("Conv", ["hs", "w2"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, hw, hw])],
        inits,
        opset,
    )


def decomposed_layernorm(tokens: int = 6, width: int = 16, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
        "w2": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
        "gamma": rng.uniform(0.5, 1.5, width).astype(np.float32),
        "beta": (rng.standard_normal(width) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], "fc1"),
        helper.make_node("ReduceMean", ["h"], ["mean"], "ln_mean", axes=[-1]),
        helper.make_node("Sub", ["h", "mean"], ["d"], "ln_sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], "ln_pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], "ln_var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], "ln_add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], "ln_sqrt"),
        helper.make_node("Div", ["d", "std"], ["normed"], "ln_div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], "ln_gamma"),
        helper.make_node("Add", ["scaled", "beta"], ["ln"], "ln_beta"),
        helper.make_node("MatMul", ["ln", "w2"], ["y"], "fc2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])],
        inits,
        opset,
    )


def torch_cast_chain(channels: int = 4, hw: int = 8, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {"w1": _conv_weights(rng, channels, 3), "w2": _conv_weights(rng, channels, channels)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c1"], ["f"], "cast_float", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["f"], ["i1"], "identity1"),
        helper.make_node("Identity", ["i1"], ["i2"], "identity2"),
        helper.make_node("Cast", ["i2"], ["wide"], "cast_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["wide"], ["back"], "cast_back", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["back"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, hw, hw])],
        inits,
        opset,
    )
