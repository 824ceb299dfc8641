"""Take a dynamically quantized model back to float (`--dequantize`).

Dynamic quantization (ONNX Runtime's `quantize_dynamic`, onnx.quantize 0.1) stores int8 weights
and quantizes activations at run time:

    (x_q, s_x, z_x) = DynamicQuantizeLinear(x)
    y = Cast(ConvInteger(x_q, W_q, z_x, z_W) [+ b_q]) · (s_x · s_W)      (MatMulInteger alike)

with b_q = Cast(Floor(b / (s_x · s_W))) when the bias is quantized too.  Since
(x_q − z_x)·s_x ≈ x, the float model it stands for is

    y = Conv(x, W, b),   W = (W_q − z_W) · s_W   (per output channel when s_W is a vector)

which is what this pass writes in its place; DynamicQuantizeLSTM likewise becomes LSTM on
(W_q − z_W) · s_W (its weights transposed back to ONNX's layout).  The graph is then a float
graph to calibrate afresh.  A pattern this pass does not know is refused with the node named.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, const_array, name_of, replace_value, single_consumer
from qcompile.quant_math import dequantize

__all__ = ["dequantize_dynamic", "INTEGER_OPS"]

INTEGER_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM")


def _const(value: ir.Value | None) -> np.ndarray | None:
    return const_array(value) if value is not None else None


def _weight_scale(factor: ir.Node, x_scale: ir.Value) -> np.ndarray | None:
    """s_W of s = Mul(s_x, s_W) (either order)."""
    if factor.op_type != "Mul":
        return None
    a, b = factor.inputs[0], factor.inputs[1]
    other = b if a is x_scale else a if b is x_scale else None
    return _const(other)


def _int_bias(add: ir.Node, integer: ir.Value) -> np.ndarray | None:
    """b of Add(y_int, [Reshape](Cast(Floor(Div(b, s))))), the bias onnx.quantize 0.1 quantizes at run time."""
    other = add.inputs[1] if add.inputs[0] is integer else add.inputs[0]
    node = other.producer() if other is not None else None
    while node is not None and node.op_type in ("Reshape", "Cast", "Floor"):
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    return _const(node.inputs[0]) if node is not None and node.op_type == "Div" else None


def _rewrite_integer(graph: ir.Graph, node: ir.Node, fresh: FreshNames) -> None:
    x_q, w_q = node.inputs[0], node.inputs[1]
    source = x_q.producer() if x_q is not None else None
    w, w_zp = _const(w_q), _const(node.inputs[3] if len(node.inputs) > 3 else None)
    if source is None or source.op_type != "DynamicQuantizeLinear" or w is None or w_q is None:
        raise QCompileError(f"{node.op_type} {node.name!r}: not a dynamically quantized op with stored weights")
    x, x_scale = source.inputs[0], source.outputs[1]
    current, bias = node.outputs[0], None
    nxt = single_consumer(current)
    if nxt is not None and nxt.op_type == "Add":
        bias, nxt = _int_bias(nxt, current), nxt
        current = nxt.outputs[0]
        nxt = single_consumer(current)
    if nxt is None or nxt.op_type != "Cast":
        raise QCompileError(f"{node.op_type} {node.name!r}: its output is not cast to float and scaled")
    mul = single_consumer(nxt.outputs[0])
    factor = mul.inputs[1].producer() if mul is not None and mul.inputs[1] is not None else None
    if mul is None or mul.op_type != "Mul" or factor is None:
        raise QCompileError(f"{node.op_type} {node.name!r}: its output is not scaled by s_x·s_W")
    w_scale = _weight_scale(factor, x_scale)
    if w_scale is None:
        raise QCompileError(f"{node.op_type} {node.name!r}: its weight scale is not stored")
    conv = node.op_type == "ConvInteger"
    zp = np.zeros((), np.int64) if w_zp is None else w_zp
    w_f = add_initializer(graph, f"{name_of(w_q)}_float", dequantize(w, w_scale, zp, 0 if conv else w.ndim - 1), fresh)
    inputs = [x, w_f]
    if bias is not None and conv:
        inputs.append(add_initializer(graph, f"{name_of(w_q)}_bias", bias.reshape(-1).astype(np.float32), fresh))
    out = ir.Value(name=fresh(f"{name_of(mul.outputs[0])}_float"))
    attrs = list(node.attributes.values()) if conv else []
    new = [ir.Node("", "Conv" if conv else "MatMul", inputs, attributes=attrs, outputs=[out], name=name_of(node))]
    if bias is not None and not conv:
        b = add_initializer(graph, f"{name_of(w_q)}_bias", bias.astype(np.float32), fresh)
        added = ir.Value(name=fresh(f"{out.name}_bias"))
        new.append(ir.Node("", "Add", [out, b], outputs=[added], name=fresh(f"{name_of(node)}_bias")))
        out = added
    graph.insert_before(node, new)
    node.name = fresh(f"{name_of(node)}_integer")
    replace_value(mul.outputs[0], out)


def _rewrite_lstm(graph: ir.Graph, node: ir.Node, fresh: FreshNames) -> None:
    """DynamicQuantizeLSTM(X, W, R, B, lens, h0, c0, P, s_W, z_W, s_R, z_R) → LSTM(X, W_f, R_f, B, lens, h0, c0, P)."""
    arrays = [_const(node.inputs[i]) if i < len(node.inputs) else None for i in (1, 2, 8, 9, 10, 11)]
    w, r, w_s, w_z, r_s, r_z = arrays
    if w is None or r is None or w_s is None or r_s is None:
        raise QCompileError(f"DynamicQuantizeLSTM {node.name!r}: its weights or scales are not stored")

    def back(q: np.ndarray, s: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        # [d, input, 4·hidden], scaled per direction (or per column: a 2-D scale) → ONNX's [d, 4·hidden, input]
        z = np.zeros_like(s, np.int64) if z is None else z.astype(np.int64)
        s3, z3 = s.reshape(s.shape[0], 1, -1), z.reshape(z.shape[0], 1, -1)
        return ((q.astype(np.int64) - z3).astype(np.float32) * s3.astype(np.float32)).transpose(0, 2, 1).copy()

    w_f = add_initializer(graph, f"{name_of(node)}_W", back(w, w_s, w_z), fresh)
    r_f = add_initializer(graph, f"{name_of(node)}_R", back(r, r_s, r_z), fresh)
    inputs = [node.inputs[0], w_f, r_f, *node.inputs[3:8]]
    outputs = [ir.Value(name=fresh(f"{name_of(v)}_float")) for v in node.outputs]
    lstm = ir.Node("", "LSTM", inputs, attributes=list(node.attributes.values()), outputs=outputs, name=name_of(node))
    graph.insert_before(node, [lstm])
    node.name = fresh(f"{name_of(node)}_integer")
    for old, new in zip(node.outputs, outputs, strict=True):
        replace_value(old, new)


def dequantize_dynamic(model: ir.Model) -> int:
    """Rewrite every integer op of `model`'s main graph in place; the number rewritten."""
    graph, fresh = model.graph, FreshNames(model.graph)
    found = [n for n in graph if n.op_type in INTEGER_OPS]
    for node in found:
        if node.op_type == "DynamicQuantizeLSTM":
            _rewrite_lstm(graph, node, fresh)
        else:
            _rewrite_integer(graph, node, fresh)
    RemoveUnusedNodesPass()(model)
    left = [n for n in model.graph.all_nodes() if n.op_type in (*INTEGER_OPS, "DynamicQuantizeLinear")]
    if left:
        raise QCompileError(f"{left[0].op_type} {left[0].name!r} is still integer after dequantizing; not rewritten")
    return len(found)
