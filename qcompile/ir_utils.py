"""Small helpers on `onnx_ir` graphs shared by passes and targets."""

from __future__ import annotations

from collections import Counter
from typing import TypeGuard

import numpy as np
import onnx_ir as ir

__all__ = [
    "const_array",
    "release_external",
    "external_tensors",
    "add_initializer",
    "op_histogram",
    "onnx_opset",
    "single_consumer",
    "unique_name",
    "FreshNames",
    "is_float_value",
    "replace_value",
    "values_by_name",
    "name_of",
    "in_subgraph",
    "prepend",
    "uses_by_graph",
    "all_initializers",
]


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of an initializer (or a value with a known constant), else None."""
    if value is None or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except (ValueError, TypeError) as e:  # data that does not match the declared shape or type
        from qcompile.errors import QCompileError

        raise QCompileError(
            f"tensor {value.name!r}: its stored data does not match its declared type and shape ({e})"
        ) from e


def external_tensors(model: ir.Model) -> list[ir.ExternalTensor]:
    """The initializers whose data stays in external files (not read into memory)."""
    return [v.const_value for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]


def release_external(value: ir.Value | None) -> None:
    """Unmap an external tensor's data once read (callers drop their array views first).

    Memory-mapped weights count towards resident memory while mapped: releasing each
    after use keeps a model with gigabytes of weights at one tensor's worth.
    """
    if value is not None and isinstance(value.const_value, ir.ExternalTensor):
        try:
            value.const_value.release()
        except BufferError:  # a view is still alive somewhere (a debugger, a caller): unmapped when it goes
            pass


class FreshNames:
    """Names that no value or node of a graph uses, for one pass run.

    The graph is scanned once; every name handed out is remembered, so each
    name costs O(1) instead of a scan of the graph (a pass that inserts Q/DQ
    around every tensor would otherwise be quadratic in the graph size).
    """

    def __init__(self, graph: ir.Graph):
        self.taken = set(values_by_name(graph)) | {n.name for n in graph.all_nodes() if n.name}

    def __call__(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`…, whichever is free; it is then taken."""
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def unique_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2`…, whichever no value or node in the graph uses (one scan)."""
    return FreshNames(graph)(base)


def name_of(item: ir.Value | ir.Node) -> str:
    """The name of a value or node; after prepare (onnx-ir's NameFixPass) every one has a name."""
    if not item.name:
        raise ValueError(f"{type(item).__name__} has no name: {item!r}")
    return item.name


def prepend(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Put `nodes` at the start of `graph` (where an input, initializer or outer-scope value is ready)."""
    if len(graph):
        graph.insert_before(graph.node(0), nodes)
    else:
        graph.extend(nodes)


def uses_by_graph(value: ir.Value) -> dict[int, tuple[ir.Graph, list[tuple[ir.Node, int]]]]:
    """id(graph) → (graph, [(node, input index)]) for the readers of `value`, per graph they sit in
    (its own, and the If/Loop bodies that read it from the outer scope), in order of first use."""
    found: dict[int, tuple[ir.Graph, list[tuple[ir.Node, int]]]] = {}
    for node, idx in value.uses():
        graph = node.graph
        assert graph is not None, "a reader outside any graph"
        found.setdefault(id(graph), (graph, []))[1].append((node, idx))
    return found


def in_subgraph(node: ir.Node, model: ir.Model) -> bool:
    """The node sits in an If branch or a Loop/Scan body, not in the model's main graph."""
    return node.graph is not model.graph


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named value of the graph and its subgraphs: inputs, initializers and node outputs
    (ONNX names are unique across scopes)."""
    values: dict[str, ir.Value] = {}
    for g in (graph, *graph.subgraphs()):
        values.update({v.name: v for v in g.inputs if v.name})
        values.update(g.initializers)
    values.update({v.name: v for n in graph.all_nodes() for v in n.outputs if v.name})
    return values


def all_initializers(graph: ir.Graph) -> dict[str, ir.Value]:
    """The initializers of `graph` and of its subgraphs, by name."""
    found = dict(graph.initializers)
    for sub in graph.subgraphs():
        found.update(sub.initializers)
    return found


def add_initializer(
    graph: ir.Graph, name: str, array: np.ndarray, fresh: FreshNames | None = None, dtype: ir.DataType | None = None
) -> ir.Value:
    """Register `array` as a new initializer with a fresh name (from `fresh` when given), stored as
    `dtype` when given (INT4 data held in an int8 array)."""
    name = (fresh or FreshNames(graph))(name)
    stored = dtype or ir.DataType.from_numpy(array.dtype)
    value = ir.Value(
        name=name,
        const_value=ir.tensor(array, dtype=stored, name=name),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(stored),
    )
    graph.register_initializer(value)
    return value


def op_histogram(model: ir.Model) -> Counter:
    """Op type → count, over the main graph and every If/Loop/Scan body."""
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph.all_nodes()
    )


def onnx_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def single_consumer(value: ir.Value) -> ir.Node | None:
    """The only node reading `value`, if exactly one does and it is not a graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def is_float_value(value: ir.Value | None) -> TypeGuard[ir.Value]:
    return value is not None and value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of `old` read `new`; a graph output keeps its public name."""
    was_output = old.is_graph_output()
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        new.type = new.type or old.type  # a graph output needs its type declared
        new.shape = new.shape or old.shape
        if not new.is_graph_input() and not new.is_initializer():
            old.name = None
            new.name = name
