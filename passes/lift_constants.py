"""Lift weights held in `Constant` nodes into initializers.

PaddleOCR exports keep every weight in a Constant node; a quantizer that only
looks at initializers leaves them float.  After this pass every constant
tensor is an initializer, so weight quantization sees it.  The work is onnx-ir's
`LiftConstantsToInitializersPass` with every constant lifted, whatever its size.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qcompile.pipeline import CompilePass

__all__ = ["LiftConstants"]


class LiftConstants(CompilePass):
    provides = ("weights_lifted",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        return ir.passes.PassResult(model, result.modified)
