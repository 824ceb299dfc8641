"""Rewrite a QOperator model (QLinearConv, QLinearMatMul, QGemm, ...) into the equivalent QDQ form.

Each integer op becomes its float op between DequantizeLinear and QuantizeLinear with the same
scales and zero points, its integer output keeping its name:

    QLinearConv(x_q, s_x, z_x, w_q, s_w, z_w, s_y, z_y, b_q)
        → y_q = Q(Conv(DQ(x_q, s_x, z_x), DQ(w_q, s_w, z_w), DQ(b_q, s_x·s_w)), s_y, z_y)

(the int32 bias's scale is s_x·s_w with zero point 0, as QLinearConv defines it; QGemm's is
α·s_a·s_b).  Ops that move quantized data without arithmetic (MaxPool, Flatten, Reshape,
Transpose, ...) read it through DequantizeLinear and write it through QuantizeLinear with the
parameters of their input, which is exact.  ONNX Runtime fuses the result back into the same
integer kernels, so the outputs are the same bits; then `import_qdq` reads the plan from it.

An op with no float equivalent here is refused with its name.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, const_array, name_of, replace_value

__all__ = ["qoperator_to_qdq", "PASS_THROUGH"]

PASS_THROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
                "Gather", "Split", "Resize", "DepthToSpace", "SpaceToDepth")  # fmt: skip

# op → (float op, [(value index, scale index, zero point index) per quantized input], (y scale, y zero point))
_SIGNATURES: dict[str, tuple[str, list[tuple[int, int, int]], tuple[int, int]]] = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QGemm": ("Gemm", [(0, 1, 2), (3, 4, 5)], (7, 8)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
}


class _Rewriter:
    """One rewrite of a model's main graph, in topological order."""

    def __init__(self, model: ir.Model):
        self.graph = model.graph
        self.fresh = FreshNames(model.graph)
        self.params: dict[int, tuple[ir.Value, ir.Value | None]] = {}  # id(integer value) → (scale, zero point)

    def dq(self, value: ir.Value, scale: ir.Value, zp: ir.Value | None, axis: int | None = None) -> ir.Node:
        out = ir.Value(name=self.fresh(f"{name_of(value)}_dq"), type=ir.TensorType(ir.DataType.FLOAT))
        attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
        inputs = [value, scale] + ([zp] if zp is not None else [])
        return ir.Node(
            "", "DequantizeLinear", inputs, attributes=attrs, outputs=[out], name=self.fresh(f"{out.name}_DQ")
        )

    def replace(self, node: ir.Node, new: list[ir.Node], outputs: list[ir.Value]) -> None:
        """Put `new` where `node` was; readers of its outputs read `outputs` instead."""
        self.graph.insert_before(node, new)
        for old, value in zip(node.outputs, outputs, strict=True):
            replace_value(old, value)
        self.graph.remove(node, safe=True)

    def float_op(self, node: ir.Node, op: str, inputs: list[ir.Value | None], attrs, scale, zp) -> None:
        """`op` on `inputs`, quantized back with (scale, zp) unless scale is None (a float output)."""
        while inputs and inputs[-1] is None:
            inputs.pop()
        y = ir.Value(name=self.fresh(f"{name_of(node.outputs[0])}_float"), type=ir.TensorType(ir.DataType.FLOAT))
        compute = ir.Node("", op, inputs, attributes=attrs, outputs=[y], name=name_of(node) + "_float")
        if scale is None:
            self.replace(node, [compute], [y])
            return
        out = node.outputs[0]
        q_out = ir.Value(name=self.fresh(f"{name_of(out)}_q"), type=out.type)
        q = ir.Node("", "QuantizeLinear", [y, scale] + ([zp] if zp is not None else []), outputs=[q_out],
                    name=self.fresh(f"{name_of(out)}_Q"))  # fmt: skip
        self.params[id(q_out)] = (scale, zp)
        self.replace(node, [compute, q], [q_out])

    def qlinear(self, node: ir.Node) -> None:
        op, quantized, (ys, yz) = _SIGNATURES[node.op_type]
        dqs = []
        for vi, si, zi in quantized:
            value, scale = _at(node, vi), _at(node, si)
            if value is None or scale is None:
                raise QCompileError(f"{node.op_type} {node.name!r}: input {vi} or its scale is missing")
            dqs.append(self.dq(value, scale, _at(node, zi), _weight_axis(node, vi, scale)))
        inputs: list[ir.Value | None] = [d.outputs[0] for d in dqs]
        attrs = [a for k, a in node.attributes.items() if k not in ("channels_last",)]
        if node.op_type in ("QLinearConv", "QGemm"):
            bias = self.bias(node)
            dqs += [bias] if bias is not None else []
            inputs.append(bias.outputs[0] if bias is not None else None)
            if node.op_type == "QGemm":
                attrs = [a for a in attrs if a.name != "beta"] + [ir.AttrFloat32("beta", 1.0)]
        self.graph.insert_before(node, dqs)
        self.float_op(node, op, inputs, attrs, _at(node, ys), _at(node, yz))

    def bias(self, node: ir.Node) -> ir.Node | None:
        """QLinearConv's int32 bias has scale s_x·s_w, QGemm's α·s_a·s_b (with β folded in): zero point 0."""
        b = _at(node, 8 if node.op_type == "QLinearConv" else 6)
        if b is None:
            return None
        scales = [const_array(node.inputs[1]), const_array(node.inputs[4])]
        if scales[0] is None or scales[1] is None:
            raise QCompileError(f"{node.op_type} {node.name!r}: its scales are computed at run time")
        alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
        scale = (alpha * scales[0].astype(np.float64) * scales[1].astype(np.float64)).astype(np.float32)
        s = add_initializer(self.graph, f"{name_of(b)}_scale", scale, self.fresh)
        return self.dq(b, s, None, 0 if scale.size > 1 else None)

    def concat(self, node: ir.Node) -> None:
        dqs = []
        for i in range(2, len(node.inputs), 3):
            value, scale = node.inputs[i], node.inputs[i + 1]
            assert value is not None and scale is not None
            dqs.append(self.dq(value, scale, node.inputs[i + 2]))
        self.graph.insert_before(node, dqs)
        attrs = list(node.attributes.values())
        self.float_op(node, "Concat", [d.outputs[0] for d in dqs], attrs, node.inputs[0], node.inputs[1])

    def pass_through(self, node: ir.Node) -> None:
        """A data-movement op on integers: on the dequantized values, quantized back with the same parameters."""
        source = node.inputs[0]
        assert source is not None
        scale, zp = self.params[id(source)]
        dq = self.dq(source, scale, zp)
        self.graph.insert_before(node, [dq])
        attrs = list(node.attributes.values())
        self.float_op(node, node.op_type, [dq.outputs[0], *node.inputs[1:]], attrs, scale, zp)


def _at(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _weight_axis(node: ir.Node, index: int, scale: ir.Value) -> int | None:
    """The per-channel axis of a QLinearConv/QLinearMatMul/QGemm weight (input 3) with a vector scale."""
    s = const_array(scale)
    if index != 3 or s is None or s.size <= 1:
        return None
    if node.op_type == "QLinearConv":
        return 0
    trans_b = "transB" in node.attributes and node.attributes["transB"].as_int() == 1
    return 0 if trans_b else 1


def qoperator_to_qdq(model: ir.Model) -> bool:
    """Rewrite `model`'s QOperator ops in place (see the module docstring); True if any was."""
    rw = _Rewriter(model)
    changed = False
    for node in list(model.graph):
        if node.op_type == "QuantizeLinear":
            rw.params[id(node.outputs[0])] = (node.inputs[1], _at(node, 2))  # type: ignore[assignment]
        elif node.op_type in _SIGNATURES:
            rw.qlinear(node)
            changed = True
        elif node.op_type == "QLinearConcat":
            rw.concat(node)
            changed = True
        elif node.op_type in PASS_THROUGH and node.inputs and id(node.inputs[0]) in rw.params:
            rw.pass_through(node)
            changed = True
        elif node.op_type.startswith("QLinear") or node.op_type in ("QAttention", "QEmbedLayerNormalization"):
            raise QCompileError(f"{node.op_type} {node.name!r} has no QDQ rewrite in qcompile yet")
    if changed:
        TopologicalSortPass()(model)
    return changed
