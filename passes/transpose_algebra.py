"""Which ops commute with a Transpose, and the graph rewrites that move one below an op.

For an op f that works element by element (or along an axis that can be renamed), with
T_p(x) = transpose(x, p):

    f(T_p(a))          = T_p(f(a))                       unary elementwise, Clip, Cast, ...
    f(T_p(a), c)       = T_p(f(a, T_p⁻¹(c)))             binary elementwise; c a constant, transposed now
    f(T_p(a), T_p(b))  = T_p(f(a, b))                    both operands already transposed alike
    f(T_p(a), b)       = T_p(f(a, T_p⁻¹(b)))             any other b of the same rank: one Transpose on b
    reduce(T_p(a), axes, keepdims=1) = T_p(reduce(a, p[axes]))      and Softmax/Concat with axis p[axis]
    T_q(T_p(x))        = T_{p∘q}(x), with (p∘q)[i] = p[q[i]]; x itself when that is the identity

Softmax's single-axis meaning holds from opset 13 (`PushTransposes` requires it).  Values in
subgraphs (If/Loop branches) are never rewired: a branch may read a main-graph value, but
the main graph cannot read a branch's.  Graph outputs keep their names and layouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import FreshNames, add_initializer, replace_value

__all__ = [
    "UNARY", "BINARY", "VARIADIC", "REDUCE", "AXIS_OPS", "perm_of", "inverse", "transpose_of", "only_reader",
    "existing_transpose", "layout_inputs", "movable", "move_below", "compose_pairs",
]  # fmt: skip

UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu", "Mish", "Floor", "Ceil", "Round",
    "Sign", "Sin", "Cos", "Clip", "Cast", "Identity", "ThresholdedRelu",
})  # fmt: skip
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "PRelu"})
VARIADIC = frozenset({"Max", "Min", "Sum", "Mean", "Concat"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"})
AXIS_OPS = frozenset({"Softmax", "LogSoftmax"})


def perm_of(node: ir.Node) -> list[int]:
    return list(node.attributes["perm"].as_ints())


def inverse(p: Sequence[int]) -> list[int]:
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return inv


def transpose_of(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if (
        node is None
        or node.op_type != "Transpose"
        or node.domain not in ("", "ai.onnx")
        or "perm" not in node.attributes
    ):
        return None
    return node


def only_reader(node: ir.Node) -> bool:
    out = node.outputs[0]
    return len(out.uses()) == 1 and not out.is_graph_output()


def existing_transpose(value: ir.Value, perm: list[int]) -> ir.Node | None:
    """A Transpose(value, perm) that `value`'s own graph already has (not one inside a branch)."""
    for use in value.uses():
        node = use.node
        if node.graph is value.graph and node.op_type == "Transpose" and use.idx == 0 and perm_of(node) == perm:
            return node
    return None


def reduce_axes(node: ir.Node) -> list[int] | None:
    """Reduce axes from the attribute (opset < 18) or a constant input; None if unknown or empty."""
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].const_value is not None:
        return [int(a) for a in node.inputs[1].const_value.numpy().ravel()]
    return None


def layout_inputs(node: ir.Node) -> list[int] | None:
    """The inputs that carry the layout if `node` commutes with a Transpose, else None."""
    if node.domain not in ("", "ai.onnx") or not node.outputs or len(node.outputs) != 1:
        return None
    op = node.op_type
    if op in UNARY:
        extra = [v for v in node.inputs[1:] if v is not None]
        return [0] if all(v.const_value is not None and v.const_value.size == 1 for v in extra) else None
    if op in BINARY:
        return [0, 1] if len(node.inputs) == 2 else None
    if op in VARIADIC:
        return list(range(len(node.inputs)))
    if op in REDUCE:
        keep = node.attributes.get("keepdims")
        return [0] if (keep is None or keep.as_int() == 1) and reduce_axes(node) else None
    if op in AXIS_OPS:
        return [0]
    return None


def movable(node: ir.Node, p: list[int]) -> bool:
    """T_p can move below `node`: every layout operand is T_p-produced, a constant of rank ≤ len(p),
    or a value of rank len(p) (a lower rank would broadcast differently once transposed)."""
    indices = layout_inputs(node)
    if indices is None:
        return False
    rank = len(p)
    for i in indices:
        v = node.inputs[i]
        if v is None:
            return False
        t = transpose_of(v)
        if t is not None and perm_of(t) == p:
            continue
        if v.const_value is not None:
            if len(v.const_value.shape) > rank:
                return False
        elif v.shape is None or len(v.shape) != rank:
            return False
    return True


def move_below(graph: ir.Graph, node: ir.Node, p: list[int], fresh: FreshNames) -> ir.Node:
    """Rewrite f(…T_p(a)…) as T_p(f(…a…)); the other layout operands get T_p⁻¹ (see the module docstring).

    Returns the Transpose now on f's output.
    """
    inv = inverse(p)
    for i in layout_inputs(node) or ():
        v = node.inputs[i]
        assert v is not None
        t = transpose_of(v)
        if t is not None and perm_of(t) == p:
            node.replace_input_with(i, t.inputs[0])
            if not t.outputs[0].uses() and not t.outputs[0].is_graph_output():
                graph.remove(t, safe=True)  # a dead Transpose must not look reusable to later costs
        elif v.const_value is not None:
            node.replace_input_with(i, _transposed_constant(graph, v, inv, len(p), fresh))
        else:
            existing = existing_transpose(v, inv)
            if existing is None:
                existing = _transpose_node(v, inv, fresh)
                graph.insert_before(node, existing)
            node.replace_input_with(i, existing.outputs[0])
    _renamereduce_axes(graph, node, p, fresh)
    return _transpose_output(graph, node, p, fresh)


def _transposed_constant(graph: ir.Graph, value: ir.Value, inv: list[int], rank: int, fresh: FreshNames) -> ir.Value:
    """c'' = transpose(c padded to `rank`, p⁻¹); a size-1 constant broadcasts alike in any layout."""
    assert value.const_value is not None
    if value.const_value.size == 1:
        return value
    arr = value.const_value.numpy()
    arr = np.ascontiguousarray(arr.reshape((1,) * (rank - arr.ndim) + arr.shape).transpose(inv))
    return add_initializer(graph, f"{value.name}_{''.join(map(str, inv))}", arr, fresh)


def _transpose_node(value: ir.Value, perm: list[int], fresh: FreshNames) -> ir.Node:
    out = ir.Value(
        name=fresh(f"{value.name}_t"),
        type=value.type,
        shape=ir.Shape([value.shape[i] for i in perm]) if value.shape is not None else None,
    )
    return ir.Node(
        "",
        "Transpose",
        [value],
        attributes=[ir.AttrInt64s("perm", perm)],
        outputs=[out],
        name=fresh(f"{value.name}_Transpose"),
    )


def _renamereduce_axes(graph: ir.Graph, node: ir.Node, p: list[int], fresh: FreshNames) -> None:
    """Axis attributes (or the axes input) of `node` now index the untransposed layout: axis k → p[k]."""
    rank = len(p)
    if node.op_type in REDUCE:
        axes = [p[a % rank] for a in reduce_axes(node) or ()]
        if "axes" in node.attributes:
            node.attributes["axes"] = ir.AttrInt64s("axes", axes)
        else:
            node.replace_input_with(1, add_initializer(graph, f"{node.name}_axes", np.array(axes, np.int64), fresh))
    elif node.op_type in AXIS_OPS or node.op_type == "Concat":
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else -1
        node.attributes["axis"] = ir.AttrInt64("axis", p[axis % rank])


def _transpose_output(graph: ir.Graph, node: ir.Node, p: list[int], fresh: FreshNames) -> ir.Node:
    """Readers of `node`'s output (and the graph output of that name) read T_p of it instead."""
    out = node.outputs[0]
    readers = list(out.uses())
    if out.shape is not None:
        out.shape = ir.Shape([out.shape[i] for i in inverse(p)])  # the untransposed layout
    t_out = _transpose_node(out, p, fresh)
    graph.insert_after(node, t_out)
    for use in readers:
        use.node.replace_input_with(use.idx, t_out.outputs[0])
    if out.is_graph_output():
        name = out.name
        for k, v in enumerate(graph.outputs):
            if v is out:
                graph.outputs[k] = t_out.outputs[0]
        out.name = fresh(f"{name}_untransposed")
        t_out.outputs[0].name = name
    return t_out


def compose_pairs(graph: ir.Graph, nodes: Iterable[ir.Node] | None = None) -> bool:
    """T_q(T_p(x)) → T_{p∘q}(x), or x itself when p∘q is the identity; identity Transposes go.

    Over the whole graph, or over `nodes` only.
    """
    modified = False
    for node in list(graph if nodes is None else nodes):
        if node.graph is not graph:  # a branch node: its outer-scope inputs are not ours to bypass
            continue
        if node.graph is None or transpose_of(node.outputs[0]) is not node or node.inputs[0] is None:
            continue
        q = perm_of(node)
        inner = transpose_of(node.inputs[0])
        source, perm = (inner.inputs[0], [perm_of(inner)[i] for i in q]) if inner is not None else (node.inputs[0], q)
        if source is None:
            continue
        if perm == list(range(len(perm))):
            modified |= _bypass(graph, node, source)
        elif inner is not None:
            node.replace_input_with(0, source)
            node.attributes["perm"] = ir.AttrInt64s("perm", perm)
            modified = True
    return modified


def _bypass(graph: ir.Graph, node: ir.Node, source: ir.Value) -> bool:
    """Readers of `node`'s output read `source` (equal to it); a graph output keeps its name and type."""
    out = node.outputs[0]
    if out.is_graph_output() and (source.is_graph_input() or source.is_graph_output() or source.is_initializer()):
        return False  # two graph values cannot share one tensor
    replace_value(out, source)
    graph.remove(node, safe=True)
    return True
