"""Stage 1, prepare: load the user's model, check it, and clean it into a float graph to quantize.

Float in, float out.  The passes, composed with onnx-ir's `Sequential`:

    UpgradeOpset (21, else 13)              qcompile: tries the preferred opset on a copy first
    LiftConstantsToInitializersPass         onnx-ir: Constant-node weights become initializers
    CheckWeights                            qcompile: stored data matches each weight's type and shape
    FoldConstantsPass + RemoveUnusedNodes   onnxscript / onnx-ir
    InferShapes                             qcompile: onnx-ir's ShapeInferencePass, failure recorded
    cleanup_passes                          no-op Dropout/Cast rules, Identity elimination
    fold_batchnorm_pass                     onnxscript's BatchNorm fusion rules
    NameFixPass                             onnx-ir: unique names for the plan to refer to
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass, RemoveUnusedNodesPass

# onnxscript 0.7 exports the pass only from its module (its public `fold_constants` wraps it)
from onnxscript.optimizer._constant_folding import DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT, FoldConstantsPass

from qcompile.data import InputSpec, model_input_specs
from qcompile.errors import QCompileError, first_line
from qcompile.ir_utils import const_array, onnx_opset
from qcompile.model_io import SOURCE_BYTES_KEY, ModelSource, check_serialised, load_model
from qcompile.passes.cleanup import cleanup_passes
from qcompile.passes.fold_batchnorm import fold_batchnorm_pass
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.upgrade_opset import UpgradeOpset
from qcompile.pipeline import ReadOnlyPass, run_passes
from qcompile.runtime import SessionSource
from qcompile.targets import Target

__all__ = ["Prepared", "prepare", "prepare_passes", "FOLD_OUTPUT_LIMIT"]

FOLD_OUTPUT_LIMIT = 1 << 22  # never materialise a folded tensor over 4 M elements (a broadcast scalar, say)


@dataclass(frozen=True)
class Prepared:
    """The clean float graph, and what is known of the user's original model.

    `model` is the working copy: the quantize stage rewrites it in place.
    """

    model: ir.Model
    float_ref: SessionSource  # the user's model as ORT loads it (weights in external data stay on disk)
    float_bytes: int  # the user's file(s) on disk, or the serialised size
    name: str
    source: Path | None
    opset_before: int
    ops_before: tuple[str, ...]
    inputs: tuple[InputSpec, ...]


def prepare_passes(target: Target) -> ir.passes.Sequential:
    """Float in, float out: the passes that clean a graph before quantizing it."""
    return ir.passes.Sequential(
        UpgradeOpset(target.preferred_opset, target.min_opset),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        CheckWeights(),
        FoldConstantsPass(
            shape_inference=False,
            input_size_limit=DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=FOLD_OUTPUT_LIMIT,
        ),
        RemoveUnusedNodesPass(),
        InferShapes(),
        cleanup_passes(),
        fold_batchnorm_pass(),
        NameFixPass(),
    )


class CheckWeights(ReadOnlyPass):
    """Every in-memory weight's stored data matches its declared type and shape (a corrupt file's
    would otherwise fail deep inside a library pass)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            if not isinstance(value.const_value, ir.ExternalTensor):
                const_array(value)  # raises QCompileError naming the tensor
        return ir.passes.PassResult(model, False)


def prepare(source: ModelSource, target: Target) -> Prepared:
    """Load `source` (never modified), check it, and run `prepare_passes(target)` on a private copy."""
    model = load_model(source)
    float_ref = _session_source(model)
    _check_input(source if isinstance(source, (str, os.PathLike)) else float_ref.model)
    float_bytes = model.meta.get(SOURCE_BYTES_KEY, len(float_ref.model))
    opset_before = onnx_opset(model)
    ops_before = tuple(sorted({n.op_type for n in model.graph}))
    inputs = tuple(model_input_specs(model))
    run_passes(prepare_passes(target), model)
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    return Prepared(
        model, float_ref, float_bytes, path.stem if path else "model", path, opset_before, ops_before, inputs
    )


def _session_source(model: ir.Model) -> SessionSource:
    try:
        return SessionSource.of(model)
    except QCompileError:
        raise
    except Exception as e:  # onnx-ir's SerdeError on malformed fields (e.g. strings that are not UTF-8)
        raise QCompileError(f"the model has malformed fields: {first_line(e)[:200]}") from e


def _check_input(model: bytes | str | os.PathLike) -> None:
    """The input must pass onnx.checker (by path when it is a file: external data is not inlined)."""
    try:
        check_serialised(model)
    except onnx.checker.ValidationError as e:
        raise QCompileError(f"the model fails onnx.checker: {first_line(e, 'invalid model')}") from e
