"""Insert a QuantizeLinear → DequantizeLinear pair on every quantized tensor.

For tensor T with spec (scale s, zero point z, axis a):

    T ──► QuantizeLinear(s, z, axis=a) ──► T_q ──► DequantizeLinear(s, z, axis=a) ──► T_dq

and every reader of T reads T_dq instead, so the graph computes
dq(q(T)) = clip(round(T/s) + z) - z) · s in place of T.  A graph output keeps
its name (the DQ output takes it).  int32 specs (bias) are left to
`FoldScales`, since ONNX has no QuantizeLinear to int32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, name_of, prepend, uses_by_graph, values_by_name
from qcompile.plan import QuantPlan, QuantSpec

__all__ = ["InsertQDQ", "qdq_params"]


PACKED = {"int4": ir.DataType.INT4, "uint4": ir.DataType.UINT4}


def qdq_params(
    graph: ir.Graph, name: str, spec: QuantSpec, fresh: FreshNames, *, with_zero_point: bool = True
) -> tuple[ir.Value, ir.Value | None, list[ir.Attr]]:
    """Scale and zero-point initializers (and the axis attribute) for `spec`."""
    scale = add_initializer(graph, f"{name}_scale", spec.scale_array().astype(np.float32), fresh)
    packed = PACKED.get(spec.dtype)  # 4-bit types: ONNX's own INT4/UINT4 (opset 21), not int8 storage
    zp = (
        add_initializer(graph, f"{name}_zero_point", spec.zero_point_array(), fresh, packed)
        if with_zero_point
        else None
    )
    attrs = [ir.AttrInt64("axis", spec.axis)] if spec.axis is not None else []
    if spec.block_size is not None:
        attrs.append(ir.AttrInt64("block_size", spec.block_size))
    return scale, zp, attrs


def _already_quantized(value: ir.Value) -> bool:
    """A value a previous run handled: it feeds a QuantizeLinear, or is (renamed to) a DQ output."""
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        return True
    return any(use.node.op_type == "QuantizeLinear" and use.idx == 0 for use in value.uses())


class InsertQDQ(ir.passes.InPlacePass):
    """Quantize every tensor the plan gives an integer spec (int32 bias excepted)."""

    def __init__(self, plan: QuantPlan):
        super().__init__()
        self.plan = plan

    def ensures(self, model: ir.Model) -> None:
        values = values_by_name(model.graph)
        for name, spec in self.plan.quantized_tensors().items():
            if spec.dtype != "int32" and not _already_quantized(values[name]):
                raise ir.passes.PostconditionError(f"tensor {name!r} is planned as {spec.dtype} but has no Q/DQ")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = values_by_name(graph)
        fresh = FreshNames(graph)
        modified = False
        for name, spec in sorted(self.plan.quantized_tensors().items()):
            if spec.dtype == "int32":
                continue
            value = values.get(name)
            if value is None:
                raise QCompileError(f"plan quantizes tensor {name!r}, which the model does not have")
            if not spec.is_resolved:
                raise QCompileError(f"tensor {name!r}: spec {spec.dtype} has no scale (was it calibrated?)")
            if _already_quantized(value):
                continue
            self._insert(graph, value, spec, fresh)
            modified = True
        if modified:
            TopologicalSortPass()(model)
        return ir.passes.PassResult(model, modified)

    def _insert(self, graph: ir.Graph, value: ir.Value, spec: QuantSpec, fresh: FreshNames) -> None:
        """One Q → DQ pair in each graph that reads `value` (its own, and If/Loop bodies reading it
        from the outer scope: ONNX Runtime fuses a DQ → op → Q unit only within one graph).
        Scales and zero points are main-graph initializers, visible in every body."""
        name = name_of(value)
        scale, zp, attrs = qdq_params(graph, name, spec, fresh)
        home = value.graph or graph
        readers = {id(home): (home, []), **uses_by_graph(value)}  # its own graph first, read there or not
        for reader_graph, uses in readers.values():
            if reader_graph is home and not uses and not value.is_graph_output():
                continue
            q, dq = _qdq_pair(value, spec, scale, zp, attrs, fresh)
            producer = value.producer()
            if reader_graph is home and producer is not None:
                home.insert_after(producer, [q, dq])
            else:  # an input, initializer or outer-scope value: available from the graph's start
                prepend(reader_graph, [q, dq])
            for node, idx in uses:
                node.replace_input_with(idx, dq.outputs[0])
            if reader_graph is home and value.is_graph_output():
                _take_output_name(home, value, dq.outputs[0], fresh)


def _qdq_pair(
    value: ir.Value, spec: QuantSpec, scale: ir.Value, zp: ir.Value | None, attrs: list[ir.Attr], fresh: FreshNames
) -> tuple[ir.Node, ir.Node]:
    name = name_of(value)
    q_out = ir.Value(name=fresh(f"{name}_q"), type=ir.TensorType(ir.DataType[spec.dtype.upper()]), shape=value.shape)
    q = ir.Node("", "QuantizeLinear", [value, scale, zp], attributes=attrs, outputs=[q_out], name=fresh(f"{name}_Q"))
    dq_out = ir.Value(name=fresh(f"{name}_dq"), type=value.type, shape=value.shape)
    dq = ir.Node(
        "", "DequantizeLinear", [q_out, scale, zp], attributes=attrs, outputs=[dq_out], name=fresh(f"{name}_DQ")
    )
    return q, dq


def _take_output_name(graph: ir.Graph, value: ir.Value, dq_out: ir.Value, fresh: FreshNames) -> None:
    """A graph output keeps its name: the DQ output takes it, the float value is renamed."""
    name = name_of(value)
    for i, out in enumerate(graph.outputs):
        if out is value:
            graph.outputs[i] = dq_out
    value.name = fresh(f"{name}_float")
    dq_out.name = name
