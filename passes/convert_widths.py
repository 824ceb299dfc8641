"""One integer width per node unit: a DequantizeLinear → QuantizeLinear pair where a node reads an
activation quantized at the other width (for targets with `Target.uniform_widths`, the NPUs).

An NPU takes DQ → op → Q as one kernel only when the activations in and out share a width (QNN:
uint8 or uint16).  A mixed plan (a16w8 with 8-bit nodes, a 16-bit node after an 8-bit one) leaves
tensors written at one width and read at the other; this pass gives such a reader a converted copy:

    x_q (width a) → DQ(s, z) → Q(s', z') → DQ(s', z') → op (width b)

where (s', z') cover the same real range [(q_min − z)·s, (q_max − z)·s] with width b's levels:
s' = (hi − lo) / (q'_max − q'_min), z' = round(q'_min − lo / s').  The EP runs the DQ → Q pair as one
requantizing op (QNN's Convert); a constant read as an activation (a Mul by a scalar) is stored again at
the node's width instead.  A node's width is that of the Q reading its output (through the
Relu/Clip it fuses).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, single_consumer
from qcompile.quant_math import IntRange, int_range
from qcompile.targets.base import Target

__all__ = ["ConvertWidths"]

_WIDTH = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16}


def _dtype(value: ir.Value | None) -> str | None:
    return value.dtype.name.lower() if value is not None and value.dtype is not None else None


def _output_q(node: ir.Node, target: Target) -> ir.Node | None:
    """The QuantizeLinear reading the node's first output, through a Relu/Clip it fuses."""
    out = node.outputs[0] if node.outputs else None
    nxt = single_consumer(out) if out is not None else None
    if nxt is not None and nxt.op_type in target.fusable_activations:
        nxt = single_consumer(nxt.outputs[0])
    if nxt is None and out is not None:
        readers = [u.node for u in out.uses()]
        nxt = readers[0] if readers else None
    return nxt if nxt is not None and nxt.op_type == "QuantizeLinear" else None


class ConvertWidths(ir.passes.InPlacePass):
    """A converting DQ → Q pair before every activation input quantized at another width than its node's."""

    def __init__(self, target: Target):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fresh, modified = FreshNames(model.graph), False
        for node in list(model.graph):
            rule = self.target.rule(node)
            q = _output_q(node, self.target) if rule is not None else None
            dtype = _dtype(q.outputs[0]) if q is not None else None
            if rule is None or q is None or dtype not in _WIDTH:
                continue
            if _WIDTH[dtype] == 16 and not rule.runs_a16(node):  # an 8-bit kernel writing a 16-bit tensor
                dtype = self.target.activation_dtype
                q.replace_input_with(0, _requantized(model.graph, q.inputs[0], q, dtype, fresh))  # type: ignore[arg-type]
                modified = True
            indices = range(len(node.inputs)) if rule.output == "tied_all" else (*rule.activations, rule.weight)
            for i in indices:
                value = node.inputs[i] if i is not None and i < len(node.inputs) else None
                dq = value.producer() if value is not None else None
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                constant = dq.inputs[0].is_initializer()  # type: ignore[union-attr]
                if (constant and i == rule.weight) or _WIDTH.get(_dtype(dq.inputs[0]) or "") in (None, _WIDTH[dtype]):
                    continue  # a weight keeps its own type; an activation of the node's width is fine
                convert = _constant_at if constant else _converted
                node.replace_input_with(i, convert(model.graph, dq, dtype, fresh))  # type: ignore[arg-type]
                if not dq.outputs[0].uses():  # a constant's old DQ that nothing reads any more
                    model.graph.remove(dq, safe=True)
                modified = True
        return ir.passes.PassResult(model, modified)


def _constant_at(graph: ir.Graph, dq: ir.Node, dtype: str, fresh: FreshNames) -> ir.Value:
    """A constant read as an activation (Mul by a scalar), stored again at `dtype` over the same range
    and dequantized by a DQ of its own (an NPU takes a constant input as static data, not a convert)."""
    scale, zp, want, new_scale, new_zp = _params(dq, dtype)
    real = (dq.inputs[0].const_value.numpy().astype(np.float64) - zp) * scale  # type: ignore[union-attr]
    data = np.clip(np.round(real / new_scale) + new_zp, want.qmin, want.qmax).astype(want.numpy_dtype)
    base = dq.outputs[0].name or "c"
    stored = add_initializer(graph, f"{base}_{dtype}_data", data, fresh)
    s = add_initializer(graph, f"{base}_{dtype}_scale", np.array(new_scale, np.float32), fresh)
    z = add_initializer(graph, f"{base}_{dtype}_zero_point", np.array(new_zp, want.numpy_dtype), fresh)
    out = ir.Value(name=fresh(f"{base}_{dtype}_dq"), shape=dq.outputs[0].shape, type=dq.outputs[0].type)
    graph.insert_after(
        dq, ir.Node("", "DequantizeLinear", [stored, s, z], outputs=[out], name=fresh(f"{base}_{dtype}_DQ"))
    )
    return out


def _params(qdq: ir.Node, dtype: str) -> tuple[float, float, IntRange, float, int]:
    """The Q/DQ's scale and zero point, `dtype`'s integer range, and the scale and zero point that
    cover the Q/DQ's real range [(q_min − z)·s, (q_max − z)·s] with `dtype`'s levels."""
    src = _dtype(qdq.inputs[0] if qdq.op_type == "DequantizeLinear" else qdq.outputs[0]) or "uint8"
    scale = float(np.ravel(qdq.inputs[1].const_value.numpy())[0])  # type: ignore[union-attr]
    zp = float(np.ravel(qdq.inputs[2].const_value.numpy())[0]) if len(qdq.inputs) > 2 else 0.0  # type: ignore[union-attr]
    have, want = int_range(src), int_range(dtype)
    lo, hi = (have.qmin - zp) * scale, (have.qmax - zp) * scale
    new_scale = (hi - lo) / (want.qmax - want.qmin)
    new_zp = int(np.clip(np.round(want.qmin - lo / new_scale), want.qmin, want.qmax))
    return scale, zp, want, new_scale, new_zp


def _converted(graph: ir.Graph, dq: ir.Node, dtype: str, fresh: FreshNames) -> ir.Value:
    """DQ's output requantized to `dtype` over the same real range, and dequantized again."""
    return _requantized(graph, dq.outputs[0], dq, dtype, fresh)


def _requantized(graph: ir.Graph, value: ir.Value, qdq: ir.Node, dtype: str, fresh: FreshNames) -> ir.Value:
    """`value` through Q → DQ at `dtype`, over the real range of the Q/DQ node `qdq`'s parameters; the
    pair is inserted before `qdq` if it reads `value`, after it if it writes `value`."""
    _, _, want, new_scale, new_zp = _params(qdq, dtype)
    base = value.name or "x"
    s = add_initializer(graph, f"{base}_{dtype}_scale", np.array(new_scale, np.float32), fresh)
    z = add_initializer(graph, f"{base}_{dtype}_zero_point", np.array(new_zp, want.numpy_dtype), fresh)
    q_out = ir.Value(name=fresh(f"{base}_{dtype}"), shape=value.shape, type=ir.TensorType(z.dtype))  # type: ignore[arg-type]
    dq_out = ir.Value(name=fresh(f"{base}_{dtype}_dq"), shape=value.shape, type=value.type)
    q = ir.Node("", "QuantizeLinear", [value, s, z], outputs=[q_out], name=fresh(f"{base}_to_{dtype}_Q"))
    back = ir.Node("", "DequantizeLinear", [q_out, s, z], outputs=[dq_out], name=fresh(f"{base}_to_{dtype}_DQ"))
    if qdq.op_type == "DequantizeLinear":
        graph.insert_after(qdq, [q, back])
    else:
        graph.insert_before(qdq, [q, back])
    return dq_out
