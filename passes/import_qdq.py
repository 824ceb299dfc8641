"""Import a QDQ model: its Q/DQ pairs become the plan, the graph beneath them the float graph.

An activation T quantized in the file,

    T ──► QuantizeLinear(s, z, axis) ──► T_q ──► DequantizeLinear(s, z, axis) ──► readers

loses the pair (its readers read T again) and the plan gets T: QuantSpec(dtype of T_q, s, z,
axis, block_size), marked imported.  A constant W_q (int8, uint8, int32 ...) read through
DequantizeLinear(s, z, axis) becomes the float weight

    W = (W_q − z) · s        (float32, as DequantizeLinear computes it)

with the spec in the plan: quantizing W with that spec gives back W_q exactly, since
|W/s + z − W_q| is a float32 rounding error far below one half.  The float weight is named as the
file named the constant, without a `_int8`/`_uint8`/`_int32` suffix (qcompile's own naming; ONNX
Runtime's `_quantized` too), so that a file qcompile wrote imports and writes back to the same bytes.

What has no float meaning is refused with the ops named: a DequantizeLinear whose scale differs
from its QuantizeLinear's (a requantization), quantized graph inputs or outputs, a quantized
tensor read by something other than DequantizeLinear.

`import_qdq` rewrites the model in place and returns the imported plan.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompile.errors import QCompileError
from qcompile.ir_utils import FreshNames, add_initializer, const_array, name_of, replace_value
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from qcompile.quant_form import QDQ_OPS, WEIGHT_ONLY_OPS
from qcompile.quant_math import INT_RANGES, dequantize
from qcompile.targets.base import Target

__all__ = ["import_qdq", "imported_decisions", "IMPORTED", "floor_at_zero", "remove_floors"]

IMPORTED = "imported"  # plan meta key: the specs came from the file
_SUFFIXES = (*(f"_{d}" for d in INT_RANGES), "_quantized")  # qcompile's names, ONNX Runtime's


def _params(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None, int | None, int | None]:
    """(scale, zero point or None, axis, block_size) of a Q or DQ node; scales must be constants."""
    scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None:
        raise QCompileError(f"{node.op_type} {node.name!r}: its scale is computed at run time, not stored")
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = const_array(zp_value) if zp_value is not None else None
    if zp_value is not None and zp is None:
        raise QCompileError(f"{node.op_type} {node.name!r}: its zero point is computed at run time, not stored")
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else None
    block = node.attributes["block_size"].as_int() if "block_size" in node.attributes else None
    if scale.size > 1 and axis is None and block is None:
        axis = 1  # ONNX's default axis for per-axis parameters
    if block is not None and block == 0:
        block = None
    return scale, zp, axis if scale.size > 1 else None, block


def _spec(node: ir.Node, dtype: ir.DataType | None) -> QuantSpec:
    scale, zp, axis, block = _params(node)
    if dtype is None and zp is not None:
        dtype = ir.DataType.from_numpy(zp.dtype)
    name = dtype.name.lower() if dtype is not None else "uint8"  # ONNX's default without a zero point
    if name not in INT_RANGES:
        raise QCompileError(f"{node.op_type} {node.name!r} uses {name}, which qcompile does not quantize to")
    zero = np.zeros(scale.shape, INT_RANGES[name].numpy_dtype) if zp is None else zp
    symmetric = name.startswith("int") and not np.any(zero)
    return QuantSpec(name, axis=axis, block_size=block, symmetric=symmetric).with_params(scale, zero)


def _same(a: ir.Node, b: ir.Node) -> bool:
    pa, pb = _params(a), _params(b)
    same_zp = (pa[1] is None and pb[1] is None) or (
        pa[1] is not None and pb[1] is not None and np.array_equal(pa[1], pb[1])
    )
    return np.array_equal(pa[0], pb[0]) and same_zp and pa[2:] == pb[2:]


def _float_name(quantized: ir.Value) -> str:
    """`w` for `w_int8` (qcompile's naming) or `w_quantized` (ONNX Runtime's), else `<name>_float`;
    made unique by `add_initializer`."""
    name = name_of(quantized)
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)]:
            return name[: -len(suffix)]
    return f"{name}_float"


def _import_weights(model: ir.Model, plan: QuantPlan, fresh: FreshNames) -> None:
    """DequantizeLinear on constants → float initializers, their specs into the plan."""
    for dq in [n for n in model.graph.all_nodes() if n.op_type == "DequantizeLinear"]:
        source = dq.inputs[0]
        q = const_array(source) if source is not None and source.is_initializer() else None
        if q is None or source is None:
            continue
        spec = _spec(dq, source.dtype)
        if spec.block_size is not None:
            raise QCompileError(f"DequantizeLinear {dq.name!r}: blocked weights are not imported yet")
        weights = dequantize(q, spec.scale_array(), spec.zero_point_array(), spec.axis)
        fresh.taken.discard(name_of(dq.outputs[0]))  # the DQ goes: its output's name is free for the weight
        value = add_initializer(model.graph, _float_name(source), weights, fresh)
        replace_value(dq.outputs[0], value)
        (dq.graph or model.graph).remove(dq, safe=True)
        plan.tensors[name_of(value)] = spec


def _import_activations(model: ir.Model, plan: QuantPlan) -> None:
    """Q → DQ pairs on activations: removed, their specs into the plan."""
    for q in [n for n in model.graph.all_nodes() if n.op_type == "QuantizeLinear"]:
        x = q.inputs[0]
        out = q.outputs[0]
        readers = [u.node for u in out.uses()]
        if x is None or out.is_graph_output() or any(r.op_type != "DequantizeLinear" for r in readers):
            other = next((r.op_type for r in readers if r.op_type != "DequantizeLinear"), "the graph's outputs")
            raise QCompileError(
                f"QuantizeLinear {q.name!r}: its integer output goes to {other}, not only to DequantizeLinear;"
                " such a model has no float graph beneath its Q/DQ"
            )
        for dq in readers:
            if not _same(q, dq):
                raise QCompileError(
                    f"QuantizeLinear {q.name!r} and DequantizeLinear {dq.name!r} use different scales"
                    " (a requantization), which cannot be imported as one tensor's spec"
                )
        spec = _spec(q, out.dtype)
        for dq in readers:
            replace_value(dq.outputs[0], x)
            (dq.graph or model.graph).remove(dq, safe=True)
        (q.graph or model.graph).remove(q, safe=True)
        previous = plan.tensors.get(name_of(x))
        if previous is not None and previous != spec:
            raise QCompileError(f"tensor {x.name!r} is quantized twice in the file, with different scales")
        plan.tensors[name_of(x)] = spec


def import_qdq(model: ir.Model) -> QuantPlan:
    """Remove `model`'s Q/DQ (in place), returning their specs as a plan (see the module docstring)."""
    for value in model.graph.inputs:
        if (
            value.dtype is not None
            and value.dtype.name.lower() in INT_RANGES
            and any(u.node.op_type in QDQ_OPS for u in value.uses())
        ):
            raise QCompileError(
                f"input {value.name!r} is already {value.dtype.name.lower()}: qcompile takes float inputs"
            )
    plan = QuantPlan(meta={IMPORTED: True})
    fresh = FreshNames(model.graph)
    _import_weights(model, plan, fresh)
    _import_activations(model, plan)
    left = [n for n in model.graph.all_nodes() if n.op_type in QDQ_OPS]
    if left:
        raise QCompileError(f"{left[0].op_type} {left[0].name!r} reads a value computed at run time; not imported")
    RemoveUnusedNodesPass()(model)
    return plan


def imported_decisions(model: ir.Model, plan: QuantPlan, target: Target) -> dict[str, NodeDecision]:
    """A node is int8 where the file quantized a tensor it reads or writes and the target has an
    integer kernel for it; every other node stays float, as the file had it."""
    decisions = {}
    for node in model.graph.all_nodes():
        if node.op_type in WEIGHT_ONLY_OPS:
            decisions[name_of(node)] = NodeDecision("float", f"weight-only {node.op_type}: kept as the file has it")
            continue
        touched = any(v is not None and v.name in plan.tensors for v in (*node.inputs, *node.outputs))
        if target.rule(node) is not None and touched:
            decisions[name_of(node)] = NodeDecision("int8", "imported: quantized in the file")
        else:
            decisions[name_of(node)] = NodeDecision("float", "imported: float in the file")
    return decisions


_SIGNED_OUTPUT = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "BatchNormalization")


def floor_at_zero(model: ir.Model, plan: QuantPlan) -> list[ir.Node]:
    """Insert in `model` the Relu that an imported Q performs by saturating (for the reference;
    `remove_floors` takes them out again).

    ONNX Runtime's quantizer drops a Relu after Conv, Gemm, MatMul, Add, BatchNormalization ... and
    lets the Q that follows clip instead: its zero point sits at the bottom of the integer range, so
    no real below 0 is representable.  The graph beneath the Q/DQ then lacks the Relu and is not the
    model that was quantized; with it restored it is.  Where the tensor could not go negative anyway
    the Relu changes nothing.  Returns the Relu nodes."""
    restored = []
    fresh = FreshNames(model.graph)
    for node in list(model.graph):
        if node.op_type not in _SIGNED_OUTPUT or not node.outputs:
            continue
        out = node.outputs[0]
        spec = plan.tensors.get(out.name or "")
        if spec is None or spec.is_float or spec.per_channel or not spec.is_resolved:
            continue
        if int(spec.zero_point_array().reshape(-1)[0]) != INT_RANGES[spec.dtype].qmin:
            continue
        relu = ir.Node("", "Relu", [out], name=fresh(f"{name_of(out)}_floor"))
        if out.dtype is not None:
            relu.outputs[0].dtype = out.dtype
        relu.outputs[0].shape = out.shape
        model.graph.insert_after(node, relu)
        replace_value(out, relu.outputs[0])
        relu.replace_input_with(0, out)
        restored.append(relu)
    return restored


def remove_floors(model: ir.Model, relus: list[ir.Node]) -> None:
    """Undo `floor_at_zero`: each Relu's readers read its input again."""
    for relu in relus:
        x = relu.inputs[0]
        assert x is not None
        name = relu.outputs[0].name
        relu.outputs[0].replace_all_uses_with(x, replace_graph_outputs=True)
        if x.is_graph_output():
            x.name = name
        model.graph.remove(relu, safe=True)
