"""Lower a whole (QDQ or float) ONNX model to a `.tflite` file, and say what the file's edges are.

1. Every node must have a lowering (`LOWERINGS`), else one error lists the nodes and the set.
2. Graph inputs: with integer I/O an input read only by QuantizeLinear becomes an int8 TFLite
   input with the Q's quantization (its Q is the caller's job), else a float32 input; 4-D
   inputs that feed a convolution or pool take NHWC.
3. Nodes in order: a Q/DQ binds or re-scales integers (QUANTIZE / DEQUANTIZE where a float
   tensor meets an integer one); any other node lowers in int mode when its activations are
   integer and its (fused) output is read only by Qs, else in float mode.
4. Graph outputs: in NHWC or ONNX order (whichever the data has, else a TRANSPOSE to ONNX order),
   integer (the DQ's input) with integer I/O where possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import const_array, is_float_value, name_of
from qcompile.targets import (  # noqa: F401  (register lowerings)
    tflite_ops_conv,
    tflite_ops_data,
    tflite_ops_lut,
    tflite_ops_math,
)
from qcompile.targets.tflite_fuse import fusable_activation
from qcompile.targets.tflite_graph import TflQuant, TflTensor
from qcompile.targets.tflite_lower import (
    FLOAT_ONLY,
    LOWERINGS,
    NHWC,
    Bound,
    Lowering,
    UnsupportedOp,
    identity,
    readers,
)
from qcompile.targets.tflite_writer import write_tflite

__all__ = ["IoTensor", "TfliteModel", "lower_to_tflite", "supported_ops", "check_lowerable"]

_SKIPPED = ("Constant",)
_NEEDS_NHWC = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "ConvTranspose")


@dataclass(frozen=True)
class IoTensor:
    """A TFLite input or output: its ONNX name, index, layout (tflite = onnx.transpose(perm)) and type."""

    name: str
    index: int
    perm: tuple[int, ...]
    dtype: str
    quant: TflQuant | None
    shape: tuple[int, ...] = ()  # in TFLite layout


@dataclass
class TfliteModel:
    data: bytes
    inputs: list[IoTensor]
    outputs: list[IoTensor]
    op_counts: dict[str, int]
    float_ops: list[str] = field(default_factory=list)  # ONNX nodes lowered in float32
    transposes: list[str] = field(default_factory=list)  # tensors a TRANSPOSE re-lays inside the graph
    requantized: list[str] = field(default_factory=list)  # tensors a QUANTIZE re-scales
    int16_tensors: int = 0
    integer_ops: int = 0  # ops that compute on int8/int16 tensors (not QUANTIZE, DEQUANTIZE or a RESHAPE)
    rewidened: list[str] = field(default_factory=list)  # tensors converted between int8 and int16

    def summary(self) -> dict:
        return {
            "bytes": len(self.data),
            "ops": dict(sorted(self.op_counts.items())),
            "float_ops": len(self.float_ops),
            "transposes_inside": len(self.transposes),
            "requantized": len(self.requantized),
            "integer_ops": self.integer_ops,
            "int16_tensors": self.int16_tensors,
            "width_conversions": len(self.rewidened),
        }


def supported_ops() -> list[str]:
    return sorted(LOWERINGS)


def _shape_only(node: ir.Node) -> bool:
    """A node of a shape computation (integer outputs, not graph outputs): the lowering knows every shape."""
    return bool(node.outputs) and all(
        o.dtype in (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL) and not o.is_graph_output()
        for o in node.outputs
    )


def check_lowerable(model: ir.Model) -> None:
    """Every node has a TFLite lowering (one error lists those that do not, and the supported set)."""
    missing = [
        n
        for n in model.graph.all_nodes()
        if n.op_type not in LOWERINGS
        and n.op_type not in (*_SKIPPED, "QuantizeLinear", "DequantizeLinear")
        and not _shape_only(n)
    ]
    if missing:
        listed = ", ".join(f"{n.name or '?'} ({n.op_type})" for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UnsupportedOp(
            f"no TFLite lowering for {len(missing)} node(s): {listed}{more}; supported: {', '.join(supported_ops())}"
        )


_KEEPS_LAYOUT = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Add", "Sub", "Mul")


def _readers_through_elementwise(value: ir.Value, depth: int = 3) -> list[ir.Node]:
    """The readers of `value`, and of elementwise ops in between (they keep whatever layout they get)."""
    found = list(readers(value))
    if depth > 0:
        for n in list(found):
            if n.op_type in _KEEPS_LAYOUT and n.outputs[0].shape is not None and value.shape is not None:
                if len(n.outputs[0].shape) == len(value.shape):
                    found += _readers_through_elementwise(n.outputs[0], depth - 1)
    return found


def _input_perm(value: ir.Value, rank: int) -> tuple[int, ...]:
    """Channels last where a convolution or pool reads the input, directly or through elementwise ops
    (NHWC, or NLC for 1-D), else ONNX order."""
    found = _readers_through_elementwise(value)
    if rank in (3, 4) and any(n.op_type in _NEEDS_NHWC for n in found):
        return NHWC if rank == 4 else (0, 2, 1)
    for n in found:  # SOFTMAX runs over the last axis: put the softmax axis there
        axis = n.attributes.get("axis") if n.op_type == "Softmax" else None
        if axis is not None and axis.as_int() % rank != rank - 1:
            a = axis.as_int() % rank
            return (*(d for d in range(rank) if d != a), a)
    return identity(rank)


def _bind_inputs(low: Lowering) -> list[IoTensor]:
    inputs = []
    for value in low.model.graph.inputs:
        shape = low.shape(value)
        perm = _input_perm(value, len(shape))
        tfl_shape = tuple(shape[a] for a in perm)
        direct = [u.node for u in value.uses()]
        quants = {(low.quant_of_q(q), low.dtype_of_q(q)) for q in direct if q.op_type == "QuantizeLinear"}
        if low.integer_io and direct and len(quants) == 1 and all(q.op_type == "QuantizeLinear" for q in direct):
            quant, dtype = quants.pop()
            index = low.g.add(TflTensor(name_of(value), tfl_shape, dtype, quant))
            for q in direct:
                low.ints[name_of(q.outputs[0])] = Bound(index, perm)
                low.done.add(id(q))
            inputs.append(IoTensor(name_of(value), index, perm, dtype, quant, tfl_shape))
        else:
            index = low.g.add(TflTensor(name_of(value), tfl_shape, "float32"))
            low.floats[name_of(value)] = Bound(index, perm)
            inputs.append(IoTensor(name_of(value), index, perm, "float32", None, tfl_shape))
    return inputs


def _lower_quantize(low: Lowering, q: ir.Node) -> None:
    source, quant, dtype = q.inputs[0], low.quant_of_q(q), low.dtype_of_q(q)
    assert source is not None
    if name_of(source) in low.ints:  # Q(DQ(x)): a re-scale
        src = low.ints[name_of(source)]
        index = low.requantize(src.index, quant, name_of(q.outputs[0]), dtype)
    else:
        src = low.float_input(source)
        index = low.g.add(TflTensor(name_of(q.outputs[0]), low.g.tensors[src.index].shape, dtype, quant))
        low.g.emit("QUANTIZE", [src.index], [index])
    low.ints[name_of(q.outputs[0])] = Bound(index, src.perm)


def _lower_dequantize(low: Lowering, dq: ir.Node) -> None:
    source = dq.inputs[0]
    assert source is not None
    if const_array(source) is not None:
        return  # a weight: its readers take the integers
    if name_of(source) not in low.ints:
        raise QCompileError(f"DequantizeLinear {dq.name!r} reads {name_of(source)!r}, which no Q produced")
    low.ints[name_of(dq.outputs[0])] = low.ints[name_of(source)]


def _final_outputs(low: Lowering, node: ir.Node) -> list[ir.Value]:
    """`node`'s outputs, or the output of the Relu/Clip it absorbs."""
    found = fusable_activation(node, low)
    return [found[0].outputs[0]] if found is not None else list(node.outputs)


def _width(low: Lowering, node: ir.Node) -> str:
    """The integer type an int-mode node computes in: int16 if one of its activations (inputs, or its
    fused output's Qs) is int16, else int8."""
    outputs = _final_outputs(low, node)
    dtypes = [low.dtype_of_q(u.node) for o in outputs for u in o.uses() if u.node.op_type == "QuantizeLinear"]
    dtypes += [low.g.tensors[b.index].dtype for v in node.inputs if v is not None and (b := low.ints.get(v.name or ""))]
    return "int16" if "int16" in dtypes else "int8"


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # a constant input 0 or 1 is a weight


def _float_weight(low: Lowering, value: ir.Value | None) -> bool:
    """A plain float constant of rank ≥ 2 (not a quantized one behind a DQ)."""
    if value is None or low.weight(value) is not None:
        return False
    array = low.constant(value)
    return array is not None and array.dtype.kind == "f" and array.ndim >= 2


def _integer(low: Lowering, node: ir.Node) -> bool:
    """Activations integer, and every output (after a fusable Relu/Clip) read by Qs only."""
    if node.op_type in FLOAT_ONLY:
        return False
    if node.op_type in _WEIGHTED and any(_float_weight(low, v) for v in node.inputs[:2]):
        return False  # a float island between quantized tensors: DQ → Conv with its float weight → Q
    activations = [v for v in node.inputs if is_float_value(v) and low.constant(v) is None]
    if not activations or not all(low.is_integer(v) for v in activations):
        return False
    return all(
        not o.is_graph_output() and (uses := list(o.uses())) and all(u.node.op_type == "QuantizeLinear" for u in uses)
        for o in _final_outputs(low, node)
    )


def _bind_outputs(low: Lowering) -> list[IoTensor]:
    outputs = []
    for value in low.model.graph.outputs:
        name, rank = name_of(value), len(low.shape(value))
        if low.integer_io and name in low.ints:
            bound = low.ints[name]
        else:
            bound = low.float_input(value)
        if bound.perm not in (NHWC, identity(rank)):  # NHWC or ONNX order at the edge, whichever the data has
            inside = len(low.transposes)
            bound = low.permuted(bound, identity(rank))
            del low.transposes[inside:]  # counted apart: the layout the user gets
        t = low.g.tensors[bound.index]
        outputs.append(IoTensor(name, bound.index, bound.perm, t.dtype, t.quant, t.shape))
    return outputs


def lower_to_tflite(
    model: ir.Model, *, integer_io: bool = True, integer_only: bool = False, options: dict | None = None
) -> TfliteModel:
    """The `.tflite` bytes of `model` and its edges; `integer_only` makes a float op an error; `options`
    are the target's lowering choices."""
    check_lowerable(model)
    low = Lowering(model, integer_io=integer_io, options=options)
    inputs = _bind_inputs(low)
    float_ops: list[str] = []
    for node in model.graph:
        if id(node) in low.fused or id(node) in low.done or node.op_type in _SKIPPED or _shape_only(node):
            continue
        if node.op_type == "QuantizeLinear":
            _lower_quantize(low, node)
        elif node.op_type == "DequantizeLinear":
            _lower_dequantize(low, node)
        else:
            low.mode = "int" if _integer(low, node) else "float"
            low.width = _width(low, node) if low.mode == "int" else "int8"
            if low.mode == "float" and any(is_float_value(o) for o in node.outputs):
                float_ops.append(f"{node.name} ({node.op_type})")
            LOWERINGS[node.op_type](low, node)
            low.flush()
    if integer_only and float_ops:
        raise UnsupportedOp(
            f"integer-only target: {len(float_ops)} node(s) would run in float: {', '.join(float_ops[:10])}; "
            "quantize them (policy naive) or choose target tflite, which keeps float islands"
        )
    outputs = _bind_outputs(low)
    low.g.inputs, low.g.outputs = [t.index for t in inputs], [t.index for t in outputs]
    low.g.signature = {"inputs": [t.name for t in inputs], "outputs": [t.name for t in outputs]}
    data = write_tflite(low.g)
    wide = sum(1 for t in low.g.tensors if t.dtype == "int16" and t.data is None)
    moves = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "CAST")
    integer_ops = sum(
        1 for op in low.g.ops if op.code not in moves and low.g.tensors[op.outputs[0]].dtype in ("int8", "int16")
    )
    return TfliteModel(
        data,
        inputs,
        outputs,
        low.g.op_counts(),
        float_ops,
        list(low.transposes),
        list(low.requantized),
        wide,
        integer_ops,
        list(low.rewidened),
    )
