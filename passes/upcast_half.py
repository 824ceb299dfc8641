"""Compute a float16/bfloat16 model in float32, its interface unchanged.

Integer kernels take float32 scales and produce float32 around them, and calibration ranges are
float32: so a half-precision graph is lifted whole, keeping what its user feeds and reads:

    half initializer W            → float32 W (exact: every half value is a float32 value)
    half graph input x            → x ──► Cast(to=float32) ──► readers
    half graph output y           → float32 y ──► Cast(to=half) ──► y
    Cast(to=half) inside          → Cast(to=float32)
    other half-typed attributes   → refused, named (ConstantOfShape values, RandomNormal dtypes...)

Intermediate value types are cleared and inferred again.  The model then computes in float32
what it computed in half (more precisely, not less); the card says the weights were half.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, name_of, prepend

__all__ = ["UpcastHalf", "HALF"]

HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_TYPE_ATTRIBUTES = {"Cast": "to", "CastLike": None, "EyeLike": "dtype", "RandomNormal": "dtype",
                    "RandomUniform": "dtype", "RandomNormalLike": "dtype", "RandomUniformLike": "dtype"}  # fmt: skip


class UpcastHalf(ir.passes.InPlacePass):
    """float16/bfloat16 initializers, values and Casts become float32; inputs and outputs keep their type."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if not _has_half(graph):
            return ir.passes.PassResult(model, False)
        fresh = FreshNames(graph)
        for value in [*graph.initializers.values(), *(v for g in graph.subgraphs() for v in g.initializers.values())]:
            if value.dtype in HALF and value.const_value is not None:
                value.const_value = ir.tensor(value.const_value.numpy().astype("float32"), name=value.name)
                value.dtype = ir.DataType.FLOAT
        for node in graph.all_nodes():
            _retype(node)
        for value in list(graph.inputs):
            if value.dtype in HALF and not _cast_to_float(value):
                _cast_input(graph, value, fresh)
        for i, value in enumerate(list(graph.outputs)):
            if value.dtype in HALF and not _cast_from_float(value):
                _cast_output(graph, i, value, fresh)
        for node in graph.all_nodes():  # inference fills the float32 types in again
            for out in node.outputs:
                if out.dtype in HALF and not out.is_graph_output():
                    out.dtype = ir.DataType.FLOAT
        return ir.passes.PassResult(model, True)


def _has_half(graph: ir.Graph) -> bool:
    """Anything left to lift: half weights or values inside, or a half input/output not yet behind its Cast."""
    inside = [
        *graph.initializers.values(),
        *(v for n in graph.all_nodes() for v in n.outputs if not v.is_graph_output()),
    ]
    return (
        any(v.dtype in HALF for v in inside)
        or any(v.dtype in HALF and not _cast_to_float(v) for v in graph.inputs)
        or any(v.dtype in HALF and not _cast_from_float(v) for v in graph.outputs)
    )


def _cast_to_float(value: ir.Value) -> bool:
    uses = list(value.uses())
    return bool(uses) and all(u.node.op_type == "Cast" and _to(u.node) == ir.DataType.FLOAT for u in uses)


def _cast_from_float(value: ir.Value) -> bool:
    node = value.producer()
    source = node.inputs[0] if node is not None and node.inputs else None
    return node is not None and node.op_type == "Cast" and source is not None and source.dtype == ir.DataType.FLOAT


def _to(node: ir.Node) -> ir.DataType | None:
    return ir.DataType(node.attributes["to"].as_int()) if "to" in node.attributes else None


def _retype(node: ir.Node) -> None:
    attr_name = _TYPE_ATTRIBUTES.get(node.op_type, "")
    if attr_name and attr_name in node.attributes:
        if ir.DataType(node.attributes[attr_name].as_int()) in HALF:
            node.attributes[attr_name] = ir.AttrInt64(attr_name, ir.DataType.FLOAT.value)
        return
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype in HALF:
            raise QCompileError(f"{node.op_type} {node.name!r} holds a half-precision constant qcompile cannot lift")


def _cast_input(graph: ir.Graph, value: ir.Value, fresh: FreshNames) -> None:
    readers = list(value.uses())  # before the Cast reads it too
    cast_out = ir.Value(
        name=fresh(f"{name_of(value)}_float32"), type=ir.TensorType(ir.DataType.FLOAT), shape=value.shape
    )
    cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT.value)], outputs=[cast_out],
                   name=fresh(f"{name_of(value)}_Cast"))  # fmt: skip
    prepend(graph, [cast])
    for use in readers:
        use.node.replace_input_with(use.idx, cast_out)


def _cast_output(graph: ir.Graph, index: int, value: ir.Value, fresh: FreshNames) -> None:
    half = value.dtype
    assert half is not None
    name = name_of(value)
    value.name, value.dtype = fresh(f"{name}_float32"), ir.DataType.FLOAT
    out = ir.Value(name=name, type=ir.TensorType(half), shape=value.shape)
    graph.append(ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", half.value)], outputs=[out],
                         name=fresh(f"{name}_Cast")))  # fmt: skip
    graph.outputs[index] = out
