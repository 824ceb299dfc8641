"""Constant folding: evaluate nodes whose inputs are all constants.

Delegates to onnxscript's optimizer (`fold_constants`), which evaluates with
the ONNX reference implementation and replaces the node by an initializer.
Sub-graphs computing shapes (Shape→Gather→Concat→Reshape) collapse to
constants once shapes are static; the output size is capped so that folding
never materialises huge tensors (e.g. a broadcast of a scalar to 1 GB).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from qcompile.pipeline import CompilePass

__all__ = ["FoldConstants"]


class FoldConstants(CompilePass):
    requires = ("weights_lifted",)
    provides = ("constants_folded",)

    def __init__(self, output_size_limit: int = 1 << 22):
        super().__init__()
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = len(model.graph)
        result = fold_constants(model, output_size_limit=self.output_size_limit)
        ir.passes.common.RemoveUnusedNodesPass()(model)
        modified = bool(getattr(result, "modified", False)) or len(model.graph) != before
        return ir.passes.PassResult(model, modified)
