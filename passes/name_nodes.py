"""Give every node and value a unique, stable name.

The plan refers to nodes and tensors by name, so unnamed or duplicate names
would make it ambiguous.  onnx-ir's `NameFixPass` does the naming.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from qcompile.pipeline import CompilePass

__all__ = ["NameNodes"]


class NameNodes(CompilePass):
    provides = ("named",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = NameFixPass()(model)
        return ir.passes.PassResult(model, result.modified)
