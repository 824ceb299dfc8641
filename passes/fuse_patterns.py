"""Recognise decomposed activations and normalisations, and rewrite each as its single ONNX op.

Exporters (Paddle, older PyTorch, tf2onnx) spell these out in elementwise ops:

    HardSigmoid(x; α=1/6, β=½) = Clip(x + 3, 0, 6) / 6                  (opset 6)
    HardSwish(x)   = x · Clip(x + 3, 0, 6) / 6 = x · HardSigmoid(x)     (opset 14)
    Gelu(x)        = 0.5 · x · (1 + erf(x / √2))                       (opset 20)
                   ≈ 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³)))   (approximate="tanh")
    LayerNormalization(x) = (x − E[x]) / √(Var[x] + ε) · γ + β, over the last axis  (opset 17)
    Swish(x)       = x · Sigmoid(x)                                     (opset 24)

Quantized, every op of a decomposition becomes its own requantizing kernel or float
island; one op is one kernel, and fewer rounding steps.  A pattern is rewritten only where
the target's capability table has a kernel for its op (`Target.has_kernel`: an integer
`OpRule` row or a float kernel; data, never a target name in code) and the model's opset
has the op.  The matching is onnxscript's: its HardSwish/HardSigmoid and
LayerNormalization rules as they are, its GELU rules (which emit com.microsoft ops) with a
rewrite to the standard `Gelu`, and one rule of ours for x·Sigmoid(x).  `ReduceMean` axes
written as a positive last axis are first turned into [-1], the form upstream matches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewritePass, RewriteRule, RewriteRuleClassBase, RewriteRuleSet
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion, GeluTanhFusion
from onnxscript.rewriter.rules.common import fuse_hardswish_rules
from onnxscript.rewriter.rules.fusion._layer_norm import layer_normalization_rules

from qcompile.ir_utils import FreshNames, add_initializer, onnx_opset
from qcompile.pipeline import RemovingUnused

__all__ = ["FusedOp", "FUSED_OPS", "FusePatterns", "NormalizeLastAxis"]


class _StandardGeluErf(GeluErfFusion):
    def rewrite(self, op, x):
        return op.Gelu(x)


class _StandardGeluTanh(GeluTanhFusion):
    def rewrite(self, op, x):
        return op.Gelu(x, approximate="tanh")


class _Swish(RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Mul(x, op.Sigmoid(x))

    def rewrite(self, op, x):
        return op.Swish(x)


def _hardswish_rules(*names: str) -> list[RewriteRule]:
    return [r for r in fuse_hardswish_rules().rules if r.name in names]


@dataclass(frozen=True)
class FusedOp:
    """A standard ONNX op, the opset that introduced it, and the rules that recognise it."""

    op_type: str
    min_opset: int
    rules: Callable[[], Sequence[RewriteRule]]


FUSED_OPS = (
    FusedOp("HardSigmoid", 6, lambda: _hardswish_rules("HardSigmoidFusion")),
    FusedOp("HardSwish", 14, lambda: _hardswish_rules("HardSwishFusion", "HardSwishFusionFromHardSigmoid")),
    FusedOp("Gelu", 20, lambda: [_StandardGeluErf.rule(), _StandardGeluTanh.rule()]),
    # opset 17 has the op, but upstream's pattern matches ReduceMean's axes as an input (opset 18)
    FusedOp("LayerNormalization", 18, lambda: list(layer_normalization_rules)),
    FusedOp("Swish", 24, lambda: [_Swish.rule()]),
)


class NormalizeLastAxis(ir.passes.InPlacePass):
    """ReduceMean over the last axis in the one spelling upstream's rule matches: axes=[-1]
    (not [r−1]) and keepdims written out (its default, 1, is otherwise absent)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        last: ir.Value | None = None
        modified = False
        for node in model.graph:
            axes = node.inputs[1] if node.op_type == "ReduceMean" and len(node.inputs) > 1 else None
            data = node.inputs[0] if node.inputs else None
            if axes is None or axes.const_value is None or data is None or data.shape is None:
                continue
            values = axes.const_value.numpy().ravel().tolist()
            if values not in ([-1], [len(data.shape) - 1]):
                continue
            if values != [-1]:
                if last is None:
                    last = add_initializer(model.graph, "last_axis", np.array([-1], np.int64), FreshNames(model.graph))
                node.replace_input_with(1, last)
                modified = True
            if "keepdims" not in node.attributes:
                node.attributes["keepdims"] = ir.AttrInt64("keepdims", 1)
                modified = True
        return ir.passes.PassResult(model, modified)


class FusePatterns(ir.passes.InPlacePass):
    """The rules of every `FUSED_OPS` entry in `ops` that the model's opset allows."""

    def __init__(self, ops: Sequence[str]):
        super().__init__()
        self.ops = tuple(ops)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        active = [f for f in FUSED_OPS if f.op_type in self.ops and opset >= f.min_opset]
        if not active:
            return ir.passes.PassResult(model, False)
        modified = False
        if any(f.op_type == "LayerNormalization" for f in active):
            modified = NormalizeLastAxis()(model).modified
        rules = RewriteRuleSet([r for f in active for r in f.rules()], commute=True)
        modified |= RemovingUnused(RewritePass(rules))(model).modified
        return ir.passes.PassResult(model, modified)
