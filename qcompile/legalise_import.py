"""Imported specs the target cannot run, re-planned to ones it can, each change recorded.

A file quantized for another target may carry a dtype this one has no kernel for (uint16
activations from an NPU flow on ORT CPU, say).  Such a spec keeps the real range the file gave
the tensor and is re-planned in the target's dtype:

    [lo, hi] = [(qmin − z)·s, (qmax − z)·s]   of the imported spec (per channel when it is)
    s′, z′   = scale_zero_point(lo, hi)        in the target's activation (or weight) dtype

so the tensor loses resolution but not range.  Every change is written into the plan's meta
(`legalised`: tensor → what changed and why) and shown in the card; int32 biases are
re-derived by the lowering from their input and weight scales, so an imported int32 spec is
left as it is.

Ops the target runs on integers only when their input and output share one quantization
(MaxPool, Reshape, Concat...: the rule's "tied" outputs) but whose file gave them different
ones keep the file's scales: the runtime then runs them as DequantizeLinear → float op →
QuantizeLinear, a requantization, and that is recorded the same way (keyed by the node).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompile.plan import QuantSpec
from qcompile.quant_math import INT_RANGES, int_range, scale_zero_point
from qcompile.targets.base import Target

__all__ = ["legalise_imported", "untied_requantizations"]


def _replanned(spec: QuantSpec, dtype: str, symmetric: bool) -> QuantSpec:
    old = INT_RANGES[spec.dtype]
    s, z = spec.scale_array().astype(np.float64), spec.zero_point_array().astype(np.float64)
    lo, hi = (old.qmin - z) * s, (old.qmax - z) * s
    scale, zp = scale_zero_point(lo, hi, int_range(dtype, symmetric=symmetric), symmetric=symmetric)
    return QuantSpec(dtype, axis=spec.axis, block_size=spec.block_size, symmetric=symmetric).with_params(scale, zp)


def legalise_imported(
    specs: Mapping[str, QuantSpec], weights: set[str], target: Target
) -> tuple[dict[str, QuantSpec], dict[str, str]]:
    """`specs` with every dtype `target` cannot run re-planned (see the module docstring), and what changed."""
    legal = dict(specs)
    changes = {}
    for name, spec in sorted(specs.items()):
        if spec.is_float or spec.dtype in target.allowed_qdq_dtypes or spec.dtype == "int32":
            continue
        weight = name in weights
        dtype = target.weight_dtype if weight else target.activation_dtype
        symmetric = True if weight else target.activation_symmetric
        legal[name] = _replanned(spec, dtype, symmetric)
        changes[name] = (
            f"{spec.dtype} → {dtype}: {target.name} runs {', '.join(target.allowed_qdq_dtypes)} (range kept)"
        )
    return legal, changes


def untied_requantizations(model: ir.Model, specs: Mapping[str, QuantSpec], target: Target) -> dict[str, str]:
    """Node → note, for each op the target ties whose imported input and output specs differ."""
    notes = {}
    for node in model.graph.all_nodes():
        rule = target.rule(node)
        if rule is None or rule.output not in ("tied", "tied_all") or not node.outputs:
            continue
        names = [v.name for v in (*node.inputs, node.outputs[0]) if v is not None and v.name and v.name in specs]
        distinct = {(specs[n].dtype, specs[n].scale, specs[n].zero_point) for n in names}
        if len(distinct) > 1:
            notes[f"node {node.name}"] = (
                f"{node.op_type} reads and writes different scales in the file: runs as DequantizeLinear → "
                f"float {node.op_type} → QuantizeLinear (a requantization), not as one integer op"
            )
    return notes
