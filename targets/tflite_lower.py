"""Lower a QDQ ONNX graph (qcompile's, or any valid one) to a TFLite graph, NHWC, integer where quantized.

Reading the Q/DQ pairs: a compute node whose activation inputs all come out of
DequantizeLinear nodes and whose output goes into a QuantizeLinear becomes one integer
TFLite op; its input tensors are the DQs' integer inputs, its output tensor carries the Q's
scale and zero point, and the weights are the DQs' integer initializers.  Any other node
becomes a float32 op, reading DEQUANTIZE'd tensors (a float island).

Layout: every lowered value has a permutation p with  tflite = onnx.transpose(p).  Ops that
need NHWC (convolutions, pools, resizes) ask for p = (0, 2, 3, 1); elementwise ops keep
their input's p; axis attributes are mapped through p (an ONNX axis a is TFLite axis
p.index(a)); an ONNX Transpose with permutation t only re-labels: its output keeps the
data and takes p' = t⁻¹[p].  A TRANSPOSE is emitted only where an op needs a layout its
input does not have and no re-labelling gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import const_array, name_of
from qcompile.quant_math import dequantize
from qcompile.targets.tflite_fuse import fusable_activation
from qcompile.targets.tflite_graph import INT_BOUNDS, TflGraph, TflQuant, TflTensor
from qcompile.targets.tflite_layout import moves_only_unit_axes

__all__ = [
    "Bound",
    "Lowering",
    "LOWERINGS",
    "FLOAT_ONLY",
    "register",
    "NHWC",
    "identity",
    "UnsupportedOp",
    "quant_of_qdq",
    "readers",
    "value_name",
    "integer_dtype",
    "as_int16",
]

NHWC = (0, 2, 3, 1)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


class UnsupportedOp(QCompileError):
    """A node the TFLite lowering has no rule for, or an attribute value it cannot express."""


def value_name(value: ir.Value | None) -> str:
    return (value.name if value is not None else None) or "?"


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


@dataclass(frozen=True)
class Bound:
    """The TFLite tensor holding an ONNX value, and the permutation p with tflite = onnx.transpose(p)."""

    index: int
    perm: tuple[int, ...]


Lower = Callable[["Lowering", ir.Node], None]
LOWERINGS: dict[str, Lower] = {}
FLOAT_ONLY: set[str] = set()  # ops lowered in float32 even between Q/DQ (no integer TFLite form)


def register(*op_types: str, integer: bool = True) -> Callable[[Lower], Lower]:
    def wrap(fn: Lower) -> Lower:
        for op in op_types:
            LOWERINGS[op] = fn
            if not integer:
                FLOAT_ONLY.add(op)
        return fn

    return wrap


def quant_of_qdq(node: ir.Node) -> tuple[TflQuant, str]:
    """The scale, zero point and integer type of a QuantizeLinear or DequantizeLinear."""
    scale = const_array(node.inputs[1])
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = const_array(zp_value) if zp_value is not None else None
    if scale is None:
        raise UnsupportedOp(f"{node.op_type} {node.name!r}: its scale is not a constant")
    side = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    assert side is not None
    dtype = (zp.dtype.name if zp is not None else None) or (side.dtype.name.lower() if side.dtype else "uint8")
    zp = np.zeros(np.shape(scale), np.int64) if zp is None else zp.astype(np.int64)
    axis = node.attributes.get("axis")
    rank = len(side.shape) if side.shape is not None else 1
    ax = (axis.as_int() % max(rank, 1)) if axis is not None and np.size(scale) > 1 else 0
    return TflQuant.of(scale, zp, ax), dtype


class Lowering:
    """Per-graph state of one lowering: the TFLite graph and where each ONNX value went."""

    def __init__(self, model: ir.Model, *, integer_io: bool = True, options: dict | None = None):
        self.model, self.integer_io = model, integer_io
        self.options = dict(options or {})  # lowering choices a target makes (e.g. nearest_as_copies)
        self.g = TflGraph()
        self.ints: dict[str, Bound] = {}  # ONNX value → integer TFLite tensor
        self.floats: dict[str, Bound] = {}  # ONNX value → float32 TFLite tensor
        self.requantized: list[str] = []  # nodes where a QUANTIZE re-scales an input
        self.transposes: list[str] = []  # nodes that needed a TRANSPOSE
        self.mode = "float"
        self.width = "int8"  # in int mode: the integer type the op computes in (its output Q's)
        self.rewidened: list[str] = []  # tensors converted between int8 and int16 for an op of the other width
        self.pending: list[tuple[int, int]] = []  # QUANTIZEs from an op's output, emitted after the op
        self.fused: set[int] = set()  # ids of Relu/Clip nodes folded into their producer
        self.done: set[int] = set()  # ids of Q nodes whose output a lowered op already wrote
        # tensor index → order: the tensor's row-major data is the ONNX value's flattened data taken at `order`
        # (a Flatten of NHWC data read only by fully connected layers, whose weight columns take the same order)
        self.flat_order: dict[int, np.ndarray] = {}

    # --- reading values -------------------------------------------------------------------
    def shape(self, value: ir.Value | None) -> tuple[int, ...]:
        """The ONNX shape, static: a Q/DQ output has its input's; a dimension inference left symbolic is
        the one calibration saw; a symbolic batch dimension of a graph input is 1."""
        if value is None:
            raise UnsupportedOp("an input the lowering needs is missing")
        dims = list(value.shape) if value.shape is not None else None
        if dims is not None and all(isinstance(d, int) for d in dims):
            return tuple(d for d in dims if isinstance(d, int))
        producer = value.producer()
        if producer is not None and producer.op_type in _QDQ:
            return self.shape(producer.inputs[0])
        observed = value.meta.get("qcompile.observed_shape")
        if observed is not None:
            return tuple(int(d) for d in observed)
        if value.is_graph_input() and dims and all(isinstance(d, int) for d in dims[1:]):
            return (1, *(d for d in dims[1:] if isinstance(d, int)))
        raise QCompileError(f"tensor {name_of(value)!r} has no static shape ({dims}); give the input shapes")

    def dq_source(self, value: ir.Value | None) -> ir.Node | None:
        node = value.producer() if value is not None else None
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def weight(self, value: ir.Value | None) -> tuple[np.ndarray, TflQuant, str] | None:
        """A quantized constant: (integers, quantization, dtype) of a DQ reading an initializer."""
        dq = self.dq_source(value)
        if dq is None or dq.inputs[0] is None or const_array(dq.inputs[0]) is None:
            return None
        quant, dtype = quant_of_qdq(dq)
        return const_array(dq.inputs[0]), quant, dtype  # type: ignore[return-value]

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        """A float or index constant (an initializer or Constant output), not a quantized weight."""
        return const_array(value) if value is not None else None

    def float_constant(self, value: ir.Value | None) -> np.ndarray | None:
        """A constant as reals: a float initializer, or a quantized one dequantized."""
        arr = self.constant(value)
        if arr is None and (w := self.weight(value)) is not None:
            arr = _dequantized(*w)
        return arr

    def is_integer(self, value: ir.Value) -> bool:
        return name_of(value) in self.ints or self.weight(value) is not None

    # --- producing tensors ----------------------------------------------------------------
    def int_input(self, value: ir.Value, perm: tuple[int, ...] | None = None) -> Bound:
        bound = self.ints.get(name_of(value))
        if bound is not None:
            bound = self.at_width(bound, name_of(value))
        if bound is None:
            w = self.weight(value)
            if w is None:
                raise QCompileError(f"tensor {name_of(value)!r} is not quantized")
            data, quant = _as_signed(w[0], w[1])
            index = self.g.constant(name_of(value), data, data.dtype.name, quant)
            bound = Bound(index, identity(data.ndim))
        return self.permuted(bound, perm) if perm is not None else bound

    def float_input(self, value: ir.Value, perm: tuple[int, ...] | None = None) -> Bound:
        name = name_of(value)
        bound = self.floats.get(name)
        if bound is None:
            if name in self.ints:
                src = self.ints[name]
                index = self.g.add(TflTensor(f"{name}_float", self.g.tensors[src.index].shape, "float32"))
                self.g.emit("DEQUANTIZE", [src.index], [index])
                if src.index in self.flat_order:  # a flatten of NHWC data, read by a float layer
                    self.flat_order[index] = self.flat_order[src.index]
                bound = Bound(index, src.perm)
            elif (arr := self.float_constant(value)) is not None:
                bound = Bound(self.g.constant(name, arr.astype(np.float32), "float32"), identity(arr.ndim))
            else:
                raise QCompileError(f"tensor {name!r} was not lowered before its reader")
            self.floats[name] = bound
        return self.permuted(bound, perm) if perm is not None else bound

    def input(self, node: ir.Node, i: int, perm: tuple[int, ...] | None = None) -> Bound:
        """Input `i` in the current mode, in layout `perm` (TRANSPOSE'd if needed)."""
        value = node.inputs[i]
        assert value is not None
        return self.int_input(value, perm) if self.mode == "int" else self.float_input(value, perm)

    def permuted(self, bound: Bound, perm: tuple[int, ...]) -> Bound:
        if bound.perm == perm:
            return bound
        t = self.g.tensors[bound.index]
        if t.data is not None:  # constants are re-laid at compile time
            data = np.transpose(np.transpose(t.data, np.argsort(bound.perm)), perm)
            quant = t.quant
            if quant is not None and quant.per_channel:
                quant = TflQuant(quant.scale, quant.zero_point, perm.index(bound.perm[quant.axis]))
            return Bound(self.g.constant(f"{t.name}_{''.join(map(str, perm))}", data, t.dtype, quant), perm)
        relative = tuple(bound.perm.index(a) for a in perm)  # tflite_new = tflite_old.transpose(relative)
        shape = tuple(t.shape[a] for a in relative)
        if moves_only_unit_axes(t.shape, relative):  # no byte moves: a view
            return self.reshape(bound, shape, perm)
        out = self.g.add(TflTensor(f"{t.name}_{''.join(map(str, perm))}", shape, t.dtype, t.quant))
        perm_t = self.g.constant(f"{t.name}_perm", np.asarray(relative, np.int32), "int32")
        self.g.emit("TRANSPOSE", [bound.index, perm_t], [out], "TransposeOptions")
        self.transposes.append(t.name)
        return Bound(out, perm)

    def output(
        self,
        value: ir.Value,
        perm: tuple[int, ...],
        shape: tuple[int, ...] | None = None,
        fixed: TflQuant | None = None,
    ) -> int:
        """A new tensor for `value` in layout `perm`: in int mode with the reading Q's quantization
        (or `fixed`, the op's own, re-scaled by a QUANTIZE to each reading Q that differs)."""
        onnx_shape = shape or self.shape(value)
        tfl_shape = tuple(onnx_shape[a] for a in perm)
        if self.mode == "float":
            index = self.g.add(TflTensor(name_of(value), tfl_shape, "float32"))
            self.floats[name_of(value)] = Bound(index, perm)
            return index
        q_nodes = [u.node for u in value.uses() if u.node.op_type == "QuantizeLinear"]
        wanted = [(self.quant_of_q(q), self.dtype_of_q(q)) for q in q_nodes]
        quant, dtype = (fixed, self.width) if fixed is not None else wanted[0]
        if dtype != self.width:  # a 16-bit op writing an 8-bit tensor: into int16 (s/128, 0), then re-scaled
            quant, dtype = as_int16(quant), "int16"
            fixed = quant
        name = name_of(q_nodes[0].outputs[0]) if fixed is None else name_of(value)
        index = self.g.add(TflTensor(name, tfl_shape, dtype, quant))
        for q, (q_quant, q_dtype) in zip(q_nodes, wanted, strict=True):
            target = index
            if q_quant != quant or q_dtype != dtype:  # re-scaled once the op that writes `index` is in place
                target = self.g.add(TflTensor(name_of(q.outputs[0]), tfl_shape, q_dtype, q_quant))
                self.pending.append((index, target))
                self.requantized.append(name_of(q.outputs[0]))
            self.ints[name_of(q.outputs[0])] = Bound(target, perm)
            self.done.add(id(q))
        return index

    def flush(self) -> None:
        """Emit the QUANTIZEs that re-scale the outputs of the op just lowered."""
        for src, dst in self.pending:
            self.g.emit("QUANTIZE", [src], [dst])
            if src in self.flat_order:
                self.flat_order[dst] = self.flat_order[src]
        self.pending.clear()

    def requantize(self, index: int, quant: TflQuant, name: str, dtype: str | None = None) -> int:
        """A QUANTIZE re-scaling tensor `index` to `quant` (and to `dtype`: int8 ↔ int16)."""
        t = self.g.tensors[index]
        out = self.g.add(TflTensor(name, t.shape, dtype or t.dtype, quant))
        self.g.emit("QUANTIZE", [index], [out])
        if index in self.flat_order:
            self.flat_order[out] = self.flat_order[index]
        self.requantized.append(name)
        return out

    def same_quant(self, bound: Bound, quant: TflQuant | None, name: str) -> Bound:
        """`bound`, re-scaled by a QUANTIZE unless it already has `quant` and the op's width (ops that
        keep scale and zero point)."""
        t = self.g.tensors[bound.index]
        if quant is None or (t.quant == quant and t.dtype == self.width) or t.data is not None and t.quant is None:
            return bound
        return Bound(self.requantize(bound.index, quant, f"{name}_requantized", self.width), bound.perm)

    def at_width(self, bound: Bound, name: str) -> Bound:
        """An activation at the op's width: int8 (s, z) → int16 (s/128, 0) exactly (q16 = 128 (q − z));
        int16 (s, 0) → int8 (s · 32767/127, 0), rounding."""
        t = self.g.tensors[bound.index]
        if t.dtype == self.width or t.quant is None or t.data is not None or self.mode != "int":
            return bound
        if self.width == "int16":
            quant = as_int16(t.quant)
        else:
            quant = TflQuant(tuple(v * 32767 / 127 for v in t.quant.scale), (0,) * len(t.quant.scale), t.quant.axis)
        self.rewidened.append(name)
        return Bound(self.requantize(bound.index, quant, f"{name}_{self.width}", self.width), bound.perm)

    def scratch(self, like: ir.Value, tfl_shape: tuple[int, ...]) -> int:
        """An unbound tensor with `like`'s type and quantization (an intermediate of a multi-op lowering)."""
        dtype = self.width if self.mode == "int" else "float32"
        return self.g.add(
            TflTensor(f"{name_of(like)}_{len(self.g.tensors)}", tfl_shape, dtype, self.quant_of_output(like))
        )

    def reshape(self, bound: Bound, tfl_shape: tuple[int, ...], perm: tuple[int, ...] = NHWC) -> Bound:
        """`bound`'s data under another shape (RESHAPE: a view, no data moves)."""
        t = self.g.tensors[bound.index]
        out = self.g.add(TflTensor(f"{t.name}_{'x'.join(map(str, tfl_shape))}", tfl_shape, t.dtype, t.quant))
        self._emit_reshape(bound.index, out)
        return Bound(out, perm)

    def reshape_into(self, src: int, value: ir.Value, perm: tuple[int, ...]) -> int:
        """RESHAPE tensor `src` into a new tensor bound to `value` in layout `perm`; its index."""
        out = self.output(value, perm)
        self._emit_reshape(src, out)
        return out

    def _emit_reshape(self, src: int, out: int) -> None:
        shape = self.g.tensors[out].shape
        new_shape = self.g.constant(f"{self.g.tensors[out].name}_shape", np.asarray(shape, np.int32), "int32")
        self.g.emit("RESHAPE", [src, new_shape], [out], "ReshapeOptions", newShape=list(shape))

    def take_activation(self, node: ir.Node) -> tuple[str, ir.Value]:
        """The Relu/Clip that follows `node` alone, folded into it: (TFLite fused activation, value after it)."""
        found = fusable_activation(node, self if self.mode == "int" else None)
        if found is None:
            return "NONE", node.outputs[0]
        act_node, name = found
        self.fused.add(id(act_node))
        return name, act_node.outputs[0]

    def quant_of_output(self, value: ir.Value) -> TflQuant | None:
        """The quantization the first Q reading `value` asks for (None in float mode)."""
        if self.mode == "float":
            return None
        return self.quant_of_q(next(u.node for u in value.uses() if u.node.op_type == "QuantizeLinear"))

    def quant_of_q(self, q: ir.Node) -> TflQuant:
        return _signed(*quant_of_qdq(q))

    def dtype_of_q(self, q: ir.Node) -> str:
        return integer_dtype(quant_of_qdq(q)[1])


def readers(value: ir.Value) -> Iterator[ir.Node]:
    """The nodes that read `value`, looking through Q/DQ pairs."""
    for use in value.uses():
        if use.node.op_type in _QDQ:
            yield from readers(use.node.outputs[0])
        else:
            yield use.node


def integer_dtype(dtype: str) -> str:
    """The TFLite type of a Q/DQ's integer type (uint8 becomes int8)."""
    return "int8" if dtype == "uint8" else dtype


def _signed(quant: TflQuant, dtype: str) -> TflQuant:
    """uint8 (s, z) is int8 (s, z − 128): the same reals, TFLite's integer-only type; int16 needs z = 0."""
    if dtype == "uint8":
        return TflQuant(quant.scale, tuple(z - 128 for z in quant.zero_point), quant.axis)
    if dtype == "int16" and any(quant.zero_point):
        raise UnsupportedOp(f"int16 quantization with zero point {quant.zero_point[0]}: TFLite's 16x8 needs 0")
    if dtype not in INT_BOUNDS:
        raise UnsupportedOp(f"{dtype} quantization has no TFLite int8 or int16 form")
    return quant


def _as_signed(data: np.ndarray, quant: TflQuant) -> tuple[np.ndarray, TflQuant]:
    if data.dtype == np.uint8:
        return (data.astype(np.int16) - 128).astype(np.int8), _signed(quant, "uint8")
    return data, quant


def as_int16(quant: TflQuant) -> TflQuant:
    """The int16 quantization (s/128, 0) holding an int8 one's reals exactly: q16 = 128 (q8 − z)."""
    return TflQuant(tuple(v / 128 for v in quant.scale), (0,) * len(quant.scale), quant.axis)


def _dequantized(data: np.ndarray, quant: TflQuant, dtype: str) -> np.ndarray:
    """The reals of a quantized constant, as ONNX Runtime's DequantizeLinear computes them."""
    axis = quant.axis if quant.per_channel else None
    return dequantize(data, quant.scale_array(), np.asarray(quant.zero_point, np.int64), axis)
