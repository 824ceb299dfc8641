"""Attention masks written as "add the most negative float": clamp them to a value quantization survives.

Exporters of transformer encoders build the attention bias as (1 − mask) · c with c = −3.4·10³⁸
(float32's minimum) or −10⁴, add it to the scores and take the Softmax.  In float, any c below the
scores' spread minus ~100 gives the same probabilities (exp(−100) ≈ 4·10⁻⁴⁴).  Quantized, c sets the
scale of every tensor it reaches: the masked scores' range becomes [c, max], so an 8-bit step is
|c| / 255 and the real scores all land on one level (paraphrase-MiniLM-L3: every attention head
uniform).  This pass replaces such a constant by `MASK_VALUE` = −100: exp(s − 100 − max) is below any
int8/int16 Softmax step for scores spread by less than ~85, and the prepare stage's float check
compares the outputs with the given model's.

A constant is a mask constant when every element is ≤ `HUGE_NEGATIVE` and its value reaches a
Softmax through at most `MAX_DEPTH` elementwise or data-movement nodes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir_utils import const_array

__all__ = ["ClampAttentionMask", "MASK_VALUE", "HUGE_NEGATIVE"]

MASK_VALUE = -100.0
HUGE_NEGATIVE = -1.0e4
MAX_DEPTH = 5
MAX_MASK_ELEMENTS = 1 << 20
_PATH_OPS = frozenset(
    ("Mul", "Add", "Sub", "Where", "Cast", "Reshape", "Unsqueeze", "Expand", "Slice", "Squeeze", "Transpose")
)


def _reaches_softmax(value: ir.Value, depth: int = 0) -> bool:
    for use in value.uses():
        node = use.node
        if node.op_type == "Softmax":
            return True
        if (
            node.op_type in _PATH_OPS
            and depth < MAX_DEPTH
            and any(_reaches_softmax(o, depth + 1) for o in node.outputs)
        ):
            return True
    return False


def _is_mask_constant(value: ir.Value) -> bool:
    if value.dtype is None or not value.dtype.is_floating_point():
        return False
    if value.const_value is None or value.const_value.size > MAX_MASK_ELEMENTS:
        return False
    array = const_array(value)
    return array is not None and array.size > 0 and bool(np.all(array <= HUGE_NEGATIVE))


class ClampAttentionMask(ir.passes.InPlacePass):
    """Each attention-mask constant (≤ −10⁴, on a path into a Softmax) replaced by −100."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for value in list(model.graph.initializers.values()):
            # the graph is read first: a weight's data (perhaps on disk) is never loaded to be looked at
            if not value.uses() or not _reaches_softmax(value) or not _is_mask_constant(value):
                continue
            array = const_array(value)
            assert array is not None
            value.const_value = ir.tensor(np.full_like(array, MASK_VALUE), name=value.name)
            modified = True
        return ir.passes.PassResult(model, modified)
