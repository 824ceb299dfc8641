"""Upgrade the default-domain opset so that quantization ops are legal.

Per-channel QuantizeLinear/DequantizeLinear need opset 13; int16, int4 and
blocked Q/DQ need opset 21.  The conversion itself is onnxscript's version
converter (which falls back to the ONNX C++ converter for ops it lacks
adapters for); this pass picks the target version and reports failures.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript import version_converter

from qcompile.errors import QCompileError, first_line
from qcompile.ir_utils import onnx_opset

__all__ = ["UpgradeOpset"]

_MIN_IR_VERSION_FOR_OPSET = {13: 7, 15: 8, 19: 9, 21: 10}


class UpgradeOpset(ir.passes.InPlacePass):
    """Convert the model to `preferred` (or at least `minimum`) opset."""

    def __init__(self, preferred: int = 21, minimum: int = 13):
        super().__init__()
        self.preferred = preferred
        self.minimum = minimum

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = onnx_opset(model)
        if current >= self.preferred:
            return ir.passes.PassResult(model, False)
        # Try the preferred version on a copy first: a failed conversion can
        # leave a model half-converted.
        error = _convert(ir.from_proto(ir.to_proto(model)), self.preferred)
        if error is None:
            _convert(model, self.preferred)
            return ir.passes.PassResult(model, True)
        if current >= self.minimum:
            return ir.passes.PassResult(model, False)
        second = _convert(model, self.minimum)
        if second is not None:
            raise QCompileError(f"cannot upgrade the model from opset {current} to {self.minimum} or later: {second}")
        return ir.passes.PassResult(model, True)


def _convert(model: ir.Model, version: int) -> str | None:
    """Convert in place; the reason on failure, None on success."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it logs a warning each time it falls back to the C++ converter
    try:
        version_converter.convert_version(model, version, fallback=True)
    except Exception as e:  # the converters raise assorted types
        return f"opset {version}: {first_line(e)}"
    finally:
        logger.setLevel(level)
    if onnx_opset(model) != version:
        return f"opset {version}: the converter left opset {onnx_opset(model)}"
    needed = max(v for k, v in _MIN_IR_VERSION_FOR_OPSET.items() if k <= version)
    model.ir_version = max(model.ir_version or 0, needed)
    return None
