"""Remove nodes that compute the identity at inference time.

- `Identity`;
- `Dropout` in inference mode (no training_mode input set true; mask unused);
- `Cast` to the dtype its input already has.

Each is replaced by its input; a graph output keeps its name (see
`qcompile.ir_utils.replace_value`).  Dead nodes are removed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from qcompile.ir_utils import const_array, replace_value
from qcompile.pipeline import CompilePass

__all__ = ["RemoveNoOps"]


def _identity(node: ir.Node) -> bool:
    return True


def _dropout_is_noop(node: ir.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = const_array(node.inputs[2])
        return mode is not None and not bool(mode)
    return True


def _cast_is_noop(node: ir.Node) -> bool:
    to = node.attributes.get("to")
    src = node.inputs[0].dtype if node.inputs[0] is not None else None
    return to is not None and src is not None and int(src) == to.as_int()


_NOOP_RULES: dict[str, Callable[[ir.Node], bool]] = {
    "Identity": _identity,
    "Dropout": _dropout_is_noop,
    "Cast": _cast_is_noop,
}


class RemoveNoOps(CompilePass):
    requires = ("shapes",)  # a Cast is a no-op only when its input dtype is known
    provides = ("clean",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            rule = _NOOP_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            src = node.inputs[0] if node.inputs else None
            if rule is None or src is None or not rule(node):
                continue
            out = node.outputs[0]
            if out.is_graph_output() and (src.is_graph_input() or src.is_initializer() or src.is_graph_output()):
                continue  # the graph output must stay a distinct value
            replace_value(out, src)
            model.graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
