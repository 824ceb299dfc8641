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
from qcompile.ir_utils import FreshNames, add_initializer, name_of, values_by_name
from qcompile.plan import QuantPlan, QuantSpec

__all__ = ["InsertQDQ", "qdq_params"]


def qdq_params(
    graph: ir.Graph, name: str, spec: QuantSpec, fresh: FreshNames, *, with_zero_point: bool = True
) -> tuple[ir.Value, ir.Value | None, list[ir.Attr]]:
    """Scale and zero-point initializers (and the axis attribute) for `spec`."""
    scale = add_initializer(graph, f"{name}_scale", spec.scale_array().astype(np.float32), fresh)
    zp = add_initializer(graph, f"{name}_zero_point", spec.zero_point_array(), fresh) if with_zero_point else None
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
        name = name_of(value)
        scale, zp, attrs = qdq_params(graph, name, spec, fresh)
        readers = list(value.uses())
        was_output = value.is_graph_output()
        q_out = ir.Value(
            name=fresh(f"{name}_q"), type=ir.TensorType(ir.DataType[spec.dtype.upper()]), shape=value.shape
        )
        q = ir.Node(
            "", "QuantizeLinear", [value, scale, zp], attributes=attrs, outputs=[q_out], name=fresh(f"{name}_Q")
        )
        dq_out = ir.Value(name=fresh(f"{name}_dq"), type=value.type, shape=value.shape)
        dq = ir.Node(
            "", "DequantizeLinear", [q_out, scale, zp], attributes=attrs, outputs=[dq_out], name=fresh(f"{name}_DQ")
        )
        producer = value.producer()
        if producer is None:
            graph.insert_before(graph.node(0), [q, dq]) if len(graph) else graph.extend([q, dq])
        else:
            graph.insert_after(producer, [q, dq])
        for use in readers:
            use.node.replace_input_with(use.idx, dq_out)
        if was_output:
            for i, out in enumerate(graph.outputs):
                if out is value:
                    graph.outputs[i] = dq_out
            value.name = fresh(f"{name}_float")
            dq_out.name = name
