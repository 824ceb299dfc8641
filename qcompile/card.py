"""The quantization card: what was compiled, how, and how close it is to float.

`card.json` holds every figure; `card.md` is the same for people (`qcompile.card_markdown`).
"""

from __future__ import annotations

from typing import Any

import onnx
import onnxruntime as ort

from qcompile.budget import Budget
from qcompile.card_markdown import format_changes, render_markdown
from qcompile.ir_utils import external_tensors, onnx_opset
from qcompile.prepare import Prepared
from qcompile.quantize import Quantized
from qcompile.targets import Target
from qcompile.verify import Verification

__all__ = ["build_card", "render_markdown", "format_changes"]  # the last two live in qcompile.card_markdown


def build_card(
    prepared: Prepared, quantized: Quantized, verification: Verification, target: Target, budget: Budget | None = None
) -> dict[str, Any]:
    """The card, from the three stages' results: what was compiled, how, and how close it is to float."""
    plan, calib = quantized.plan, quantized.calibration
    q_size = len(quantized.session.model_bytes()) + sum(t.nbytes for t in external_tensors(quantized.model))
    int8 = sum(1 for d in plan.nodes.values() if d.precision != "float")
    card: dict[str, Any] = {
        "target": target.describe(),
        "policy": plan.meta.get("policy"),
        "calibrator": calib.calibrator,
        "calibration_samples": calib.num_samples,
        "per_channel": plan.meta.get("per_channel"),
        "bias_corrected": list(plan.meta.get("bias_correction", [])),
        "channel_scales": dict(plan.meta.get("channel_scales", {})),  # tensor → spread of its channel scales
        "shape_inference": quantized.model.meta.get("qcompile.shape_inference", "not run"),
        "sizes": {
            "float_bytes": prepared.float_bytes,
            "quantized_bytes": q_size,
            "ratio": q_size / prepared.float_bytes,
        },
        "nodes": {"int8": int8, "float": len(plan.nodes) - int8},
        "ort_kernels": verification.ort_kernels,
        "per_node": [
            {"name": n.name, "op": n.op_type, **vars(plan.nodes[n.name])}
            for n in quantized.model.graph
            if n.name in plan.nodes
        ],
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        "fidelity": verification.fidelity.to_dict(),
    }
    if prepared.fixed_inputs:
        card["fixed_inputs"] = dict(prepared.fixed_inputs)
    if prepared.static_shapes:
        card["static_shapes"] = dict(prepared.static_shapes)
    if not prepared.form.is_float:
        card["given_quantization"] = prepared.form.describe()
    if prepared.imported is not None:
        card["imported"] = {
            "tensors": len(prepared.imported.tensors),
            "reference": verification.reference,
            "legalised": dict(plan.meta.get("legalised", {})),
            # tensors whose Q saturates at 0 where the file's tool dropped a Relu: the reference has it back
            "reference_relus": list(prepared.imported.meta.get("reference_relus", [])),
        }
    elif prepared.form.quantized:  # --dequantize or --requantize: compiled afresh from the graph beneath
        card["dequantized"] = {"reference": verification.reference}
    if verification.latency_ms is not None:
        card["latency_ms"] = verification.latency_ms
    if quantized.search is not None:
        card["search"] = quantized.search.describe(top=40)
    if verification.budget is not None and budget is not None:
        card["budget"] = verification.budget.describe(budget)
    card.update(
        {
            "model": prepared.name,
            "opset": {"before": prepared.opset_before, "after": onnx_opset(quantized.model)},
            "prepare": prepared.describe(),
            "evaluation": verification.evaluation.describe(),
        }
    )
    return card
