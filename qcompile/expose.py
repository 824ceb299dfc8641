"""Expose values computed inside `If` branches as main-graph outputs, so that ONNX Runtime returns them.

A session returns main-graph values only.  A value v computed in one branch of an If node is
lifted one level per If:

    its own branch:   v is renamed v′ (definition and every read, nested bodies included) and
                      Identity(v′) is appended to the branch's outputs
    the other branch: an empty tensor of v's type (shape [0]) is appended to its outputs
    the If node:      a new output, named v

After the If runs, v holds the branch's value when that branch ran and an empty tensor when it
did not (observers skip empty tensors).  Nested Ifs lift step by step, innermost first.

Values inside Loop and Scan bodies are not exposed: a body runs once per iteration, and its
values would have to leave as scan outputs, stacked over iterations.  `exposable_values` lists
what can be observed; nodes inside Loop/Scan bodies stay float (see `select_precision`).

Works on the protobuf a session is built from (the edge where protobuf belongs), never on the
user's model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import onnx
import onnx_ir as ir

from qcompile.errors import QCompileError
from qcompile.ir_utils import is_float_value

__all__ = ["exposable_values", "expose_branch_values", "body_kinds"]

_BRANCHES = ("then_branch", "else_branch")


def _branches(node: ir.Node) -> list[ir.Graph]:
    return [node.attributes[k].as_graph() for k in _BRANCHES if k in node.attributes]


def body_kinds(model: ir.Model) -> dict[int, str]:
    """id(subgraph) → "If" for a branch reached through If branches only, else the op type
    ("Loop", "Scan", ...) of the outermost non-If node on the way down to it."""
    kinds: dict[int, str] = {}

    def walk(graph: ir.Graph, kind: str | None) -> None:
        for node in graph:
            for attr in node.attributes.values():
                if attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    continue
                bodies = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else list(attr.as_graphs())
                for body in bodies:
                    inner = kind or (None if node.op_type == "If" else node.op_type)
                    kinds[id(body)] = inner or "If"
                    walk(body, inner)

    walk(model.graph, None)
    return kinds


def exposable_values(model: ir.Model) -> Iterator[ir.Value]:
    """The float node outputs inside If branches (any depth of If nesting), in graph order."""

    def walk(graph: ir.Graph, inside: bool) -> Iterator[ir.Value]:
        for node in graph:
            if inside:
                yield from (v for v in node.outputs if v.name and is_float_value(v))
            if node.op_type == "If" and node.domain in ("", "ai.onnx"):
                for branch in _branches(node):
                    yield from walk(branch, True)

    return walk(model.graph, False)


def expose_branch_values(graph: onnx.GraphProto, wanted: Mapping[str, int]) -> None:
    """Make each name of `wanted` (name → ONNX element type) that a node inside an If branch
    defines a node output of `graph` itself, under the same name (`graph` is changed in place).

    Raises QCompileError naming a value that could not be lifted (it lives in a Loop/Scan body)."""
    taken = _names(graph)
    _lift(graph, wanted, taken)
    defined = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = sorted(set(wanted) - defined - {i.name for i in graph.initializer})
    if missing:
        raise QCompileError(f"cannot observe {missing[:3]}: only values in If branches can be exposed")


def _lift(graph: onnx.GraphProto, wanted: Mapping[str, int], taken: set[str]) -> None:
    for node in graph.node:
        if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
            continue
        branches = {a.name: a.g for a in node.attribute if a.name in _BRANCHES}
        if len(branches) != 2:
            continue
        then, other = branches["then_branch"], branches["else_branch"]
        _lift(then, wanted, taken)  # values of nested Ifs become outputs of nodes in the branch first
        _lift(other, wanted, taken)
        for branch, opposite in ((then, other), (other, then)):
            for name in [o for n in branch.node for o in n.output if o in wanted]:
                inner, out, absent = (_fresh(taken, f"{name}_{s}") for s in ("inner", "out", "absent"))
                _rename(branch, name, inner)
                branch.node.append(onnx.helper.make_node("Identity", [inner], [out]))
                branch.output.append(onnx.helper.make_tensor_value_info(out, wanted[name], None))
                empty = onnx.helper.make_tensor(absent, wanted[name], [0], [])
                opposite.node.append(onnx.helper.make_node("Constant", [], [absent], value=empty))
                opposite.output.append(onnx.helper.make_tensor_value_info(absent, wanted[name], None))
                node.output.append(name)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename value `old` to `new` wherever `graph` (and the bodies nested in it) defines or reads it."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(body, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every value name used anywhere in `graph` and its bodies."""
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names(body)
    return names


def _fresh(taken: set[str], base: str) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
