"""Models that arrive quantized: what prepare does with each form (`qcompile.quant_form`).

    qdq, weight-only   imported: the Q/DQ become the plan (`qcompile.passes.import_qdq`)
    qoperator          rewritten to QDQ (`qcompile.passes.qoperator_to_qdq`), then imported
    integer-ops        refused, or with `dequantize` taken back to float
                       (`qcompile.passes.dequantize_dynamic`) to compile afresh
    float16            nothing here: `UpcastHalf` runs among the prepare passes

An imported model's tensor names must survive preparation, so it gets `imported_passes` only.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass

from qcompile.errors import QCompileError
from qcompile.ir_utils import values_by_name
from qcompile.passes.dequantize_dynamic import dequantize_dynamic
from qcompile.passes.import_qdq import import_qdq
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.qoperator_to_qdq import qoperator_to_qdq
from qcompile.passes.upgrade_opset import UpgradeOpset
from qcompile.pipeline import run_passes
from qcompile.plan import QuantPlan
from qcompile.quant_form import QuantForm
from qcompile.targets import Target

__all__ = ["take_in", "check_importable", "imported_passes", "check_names_kept"]


def take_in(model: ir.Model, form: QuantForm, dequantize: bool = False) -> QuantPlan | None:
    """Rewrite `model` (in place) into the float graph beneath its quantization; the imported plan,
    or None when there is nothing to import (a float model, a dequantized dynamic one)."""
    if dequantize and "integer-ops" not in form.kinds:
        raise QCompileError(f"--dequantize is for dynamically quantized models; this one is {form.summary()}")
    if not dequantize:
        check_importable(form)
    if not {"qdq", "weight-only", "qoperator", "integer-ops"} & set(form.kinds):
        return None
    run_passes(LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0), model)
    if dequantize:
        dequantize_dynamic(model)
        return None
    if "qoperator" in form.kinds:
        qoperator_to_qdq(model)  # the same integer kernels, written as Q/DQ around float ops
    return import_qdq(model)


def imported_passes(target: Target, check_weights: ir.passes.PassBase) -> ir.passes.Sequential:
    """For an imported QDQ model: what keeps every tensor name and weight the file's plan refers to."""
    return ir.passes.Sequential(
        UpgradeOpset(target.preferred_opset, target.min_opset),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        check_weights,
        InferShapes(),
        NameFixPass(),
    )


def check_importable(form: QuantForm) -> None:
    """Quantized forms with no stored plan (scales computed at run time) are refused, named."""
    if "integer-ops" in form.kinds:
        raise QCompileError(
            f"the model is dynamically quantized ({form.summary()}): its activation scales are computed at run"
            " time, so there is no plan to import; pass the float model it was made from, or --dequantize to"
            " take its weights back to float and compile afresh"
        )


def check_names_kept(model: ir.Model, imported: QuantPlan) -> None:
    known = values_by_name(model.graph)
    lost = sorted(set(imported.tensors) - set(known))
    if lost:
        raise QCompileError(f"imported tensor(s) {lost[:3]} did not survive preparing the float graph")
