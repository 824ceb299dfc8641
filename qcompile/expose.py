"""Expose values computed inside `If` branches and `Loop`/`Scan` bodies as main-graph outputs,
so that ONNX Runtime returns them.

A session returns main-graph values only.  A value v computed in one branch of an If node is
lifted one level per If:

    its own branch:   v is renamed v′ (definition and every read, nested bodies included) and
                      Identity(v′) is appended to the branch's outputs
    the other branch: an empty tensor of v's type (shape [0]) is appended to its outputs
    the If node:      a new output, named v

After the If runs, v holds the branch's value when that branch ran and an empty tensor when it
did not (observers skip empty tensors).  A value computed in a Loop or Scan body leaves as a
new scan output (v renamed v′ in the body, Identity(v′) appended to the body's outputs, a new
output v on the Loop/Scan; the body's float inputs, the state each iteration reads, likewise):
the runtime stacks it over the iterations, [iterations, *shape],
so one range covers every iteration.  Nested bodies lift step by step, innermost first.

An If inside a Loop/Scan body is not lifted: an untaken branch's empty tensor would not stack
with the taken one's; its nodes stay float (see `select_precision`).

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
_LOOPS = ("Loop", "Scan")


def _branches(node: ir.Node) -> list[ir.Graph]:
    return [node.attributes[k].as_graph() for k in _BRANCHES if k in node.attributes]


def body_kinds(model: ir.Model) -> dict[int, str]:
    """id(subgraph) → how calibration sees it: "If" (a branch reached through If branches only),
    "Loop" or "Scan" (a body, perhaps in other bodies or branches: observed per iteration), or
    "If in a loop" (a branch inside a loop body: not observed)."""
    kinds: dict[int, str] = {}

    def walk(graph: ir.Graph, in_loop: str | None) -> None:
        for node in graph:
            for body in _bodies(node):
                if node.op_type == "If":
                    kinds[id(body)] = "If in a loop" if in_loop else "If"
                    walk(body, in_loop)
                else:
                    kinds[id(body)] = node.op_type
                    walk(body, node.op_type)

    walk(model.graph, None)
    return kinds


def _bodies(node: ir.Node) -> list[ir.Graph]:
    found: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            found.append(attr.as_graph())
        elif attr.type == ir.AttributeType.GRAPHS:
            found += list(attr.as_graphs())
    return found


def exposable_values(model: ir.Model) -> Iterator[ir.Value]:
    """The float node outputs inside If branches and Loop/Scan bodies that `expose_branch_values`
    can lift (not those of an If inside a loop body), in graph order."""

    def walk(graph: ir.Graph, inside: bool, in_loop: bool) -> Iterator[ir.Value]:
        for node in graph:
            if inside:
                yield from (v for v in node.outputs if v.name and is_float_value(v))
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "If" and not in_loop:
                for branch in _branches(node):
                    yield from walk(branch, True, False)
            elif node.op_type in _LOOPS and "body" in node.attributes:
                body = node.attributes["body"].as_graph()
                yield from (v for v in body.inputs if v.name and is_float_value(v))
                yield from walk(body, True, True)

    return walk(model.graph, False, False)


def expose_branch_values(graph: onnx.GraphProto, wanted: Mapping[str, int]) -> None:
    """Make each name of `wanted` (name → ONNX element type) that a node inside an If branch or a
    Loop/Scan body defines a node output of `graph` itself, under the same name (`graph` is
    changed in place).

    Raises QCompileError naming a value that could not be lifted (in an If inside a loop body)."""
    taken = _names(graph)
    _lift(graph, wanted, taken)
    defined = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = sorted(set(wanted) - defined - {i.name for i in graph.initializer})
    if missing:
        raise QCompileError(
            f"cannot observe {missing[:3]}: values of an If branch inside a Loop/Scan body are not exposed"
        )


def _lift(graph: onnx.GraphProto, wanted: Mapping[str, int], taken: set[str], in_loop: bool = False) -> None:
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "If" and not in_loop:
            _lift_if(node, wanted, taken)
        elif node.op_type in _LOOPS:
            _lift_loop(node, wanted, taken)


def _lift_if(node: onnx.NodeProto, wanted: Mapping[str, int], taken: set[str]) -> None:
    branches = {a.name: a.g for a in node.attribute if a.name in _BRANCHES}
    if len(branches) != 2:
        return
    then, other = branches["then_branch"], branches["else_branch"]
    _lift(then, wanted, taken)  # values of nested bodies become outputs of nodes in the branch first
    _lift(other, wanted, taken)
    for branch, opposite in ((then, other), (other, then)):
        for name in [o for n in branch.node for o in n.output if o in wanted]:
            _export(branch, name, wanted[name], taken)
            absent = _fresh(taken, f"{name}_absent")
            empty = onnx.helper.make_tensor(absent, wanted[name], [0], [])
            opposite.node.append(onnx.helper.make_node("Constant", [], [absent], value=empty))
            opposite.output.append(onnx.helper.make_tensor_value_info(absent, wanted[name], None))
            node.output.append(name)


def _lift_loop(node: onnx.NodeProto, wanted: Mapping[str, int], taken: set[str]) -> None:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if body is None:
        return
    _lift(body, wanted, taken, in_loop=True)
    inputs = [i.name for i in body.input if i.name in wanted]  # the loop-carried state each iteration reads
    for name in inputs + [o for n in body.node for o in n.output if o in wanted]:
        _export(body, name, wanted[name], taken)
        node.output.append(name)  # a new scan output: the value stacked over iterations
        for attr in node.attribute:  # Scan's per-output lists, when given, need an entry for it
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.append(0)


def _export(graph: onnx.GraphProto, name: str, elem_type: int, taken: set[str]) -> None:
    """Rename `name` inside `graph` and append Identity(renamed) to the graph's outputs."""
    inner, out = _fresh(taken, f"{name}_inner"), _fresh(taken, f"{name}_out")
    _rename(graph, name, inner)
    graph.node.append(onnx.helper.make_node("Identity", [inner], [out]))
    graph.output.append(onnx.helper.make_tensor_value_info(out, elem_type, None))


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
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


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
