"""Static shape and type inference that survives models it cannot fully type.

Runs ONNX shape inference (through onnx-ir's `ShapeInferencePass`, which keeps
large initializers out of the protobuf it hands to ONNX).  On models where
inference fails or leaves dims symbolic, shapes observed while calibrating
fill the gaps later (`qcompile.passes.calibrate`), so a failure here is not fatal:
the pass records the reason in `model.meta["qcompile.shape_inference"]`.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qcompile.errors import first_line

__all__ = ["InferShapes"]


class InferShapes(ir.passes.InPlacePass):
    """ONNX shape inference; a failure is recorded in the model's meta, not raised."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            result = ShapeInferencePass(strict_mode=False)(model)
        except Exception as e:  # ONNX raises InferenceError and friends
            model.meta["qcompile.shape_inference"] = f"failed: {first_line(e)}"
            return ir.passes.PassResult(model, False)
        model.meta["qcompile.shape_inference"] = "ok"
        return ir.passes.PassResult(model, result.modified)
