"""Files that other tools quantized, written by those tools in the test: ONNX Runtime's
`quantize_static` (QDQ and QOperator) and `quantize_dynamic`, and a QAT-style QDQ export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from tests.support.quant_models import conv_model, feeds


class _Reader:
    def __init__(self, samples):
        self.samples = iter(samples)

    def get_next(self):
        return next(self.samples, None)


def float_file(folder: Path, rng: np.random.Generator) -> Path:
    path = folder / "float.onnx"
    onnx.save(ir.to_proto(conv_model(rng)), path)
    return path


def ort_static(folder: Path, rng: np.random.Generator, fmt: str = "QDQ") -> tuple[Path, Path]:
    """(float model, ORT's quantize_static output in `fmt`: "QDQ" or "QOperator")."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = float_file(folder, rng)
    out = folder / f"ort_{fmt.lower()}.onnx"
    quantize_static(
        str(source),
        str(out),
        _Reader(feeds(rng, 16)),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return source, out


def ort_dynamic(folder: Path, rng: np.random.Generator) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    out = folder / "ort_dynamic.onnx"
    quantize_dynamic(str(float_file(folder, rng)), str(out))
    return out


def qat_export(rng: np.random.Generator) -> onnx.ModelProto:
    """What a quantization-aware-training export writes: float weights read through Q → DQ (fake
    quantization, nothing folded), symmetric int8 activations, one Q/DQ pair per tensor."""
    w = (rng.normal(size=(8, 16)) * 0.2).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array((0.02 * (1 + np.arange(8) / 8)).astype(np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_z"),
        numpy_helper.from_array(np.array(0.03, np.float32), "x_s"),
        numpy_helper.from_array(np.array(0, np.int8), "x_z"),
        numpy_helper.from_array(np.array(0.05, np.float32), "h_s"),
        numpy_helper.from_array(np.array(0, np.int8), "h_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], "x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], "x_DQ"),
        helper.make_node("QuantizeLinear", ["w", "w_s", "w_z"], ["w_q"], "w_Q", axis=0),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], "w_DQ", axis=0),
        helper.make_node("Gemm", ["x_dq", "w_dq"], ["h"], "fc", transB=1),
        helper.make_node("QuantizeLinear", ["h", "h_s", "h_z"], ["h_q"], "h_Q"),
        helper.make_node("DequantizeLinear", ["h_q", "h_s", "h_z"], ["h_dq"], "h_DQ"),
        helper.make_node("Relu", ["h_dq"], ["y"], "relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "qat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def qdq_params(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor → (scale, zero point) of every QuantizeLinear on an activation and every
    DequantizeLinear on a stored integer constant, keyed by what the float graph calls the tensor:
    the Q's input, or the constant's name."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    found = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            found[node.input[0]] = (inits[node.input[1]], inits[node.input[2]] if len(node.input) > 2 else None)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            found[node.input[0]] = (inits[node.input[1]], inits[node.input[2]] if len(node.input) > 2 else None)
    return found


def dq_params_by_reader(proto: onnx.ModelProto) -> dict[tuple[str, int | str], tuple]:
    """(reader node, input slot) → (scale, zero point) of the DequantizeLinear feeding it, and
    ("output", name) for those feeding graph outputs: the quantization each op sees, whatever the
    tensors are called."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}

    def zero_point(node):  # absent means 0, of the scale's shape
        return (inits[node.input[2]] if len(node.input) > 2 else np.zeros(inits[node.input[1]].shape, int)).tolist()

    dqs = {
        n.output[0]: (inits[n.input[1]].tolist(), zero_point(n))
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
    }
    found: dict = {}
    for node in proto.graph.node:
        for slot, name in enumerate(node.input):
            if name in dqs and node.op_type != "QuantizeLinear":
                found[(node.name, slot)] = dqs[name]
    for out in proto.graph.output:
        if out.name in dqs:
            found[("output", out.name)] = dqs[out.name]
    return found
