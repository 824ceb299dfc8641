"""Stage 1, prepare: load the user's model, check it, and clean it into a float graph to quantize.

Float in, float out, equal to the user's model within float rounding.  The passes, composed
with onnx-ir's `Sequential`:

    UpgradeOpset (21, else 13)              qcompile: tries the preferred opset on a copy first
    LiftConstantsToInitializersPass         onnx-ir: Constant-node weights become initializers
    UpcastHalf                              qcompile: a float16/bfloat16 graph computes in float32
    CheckWeights                            qcompile: stored data matches each weight's type and shape
    FoldConstantsPass + RemoveUnusedNodes   onnxscript / onnx-ir
    InferShapes                             qcompile: onnx-ir's ShapeInferencePass, failure recorded
    cleanup_passes                          no-op Dropout/Cast and Cast round trips, Identity elimination
    fold_batchnorm_pass                     onnxscript's BatchNorm fusion rules
    canonical_passes, to a fixed point:     the converter's residue, which costs int8 far more than float
        PushTransposes                      layout Transposes moved down and cancelled
        fold_batchnorm_pass                 again: a BatchNorm a moved Transpose kept from its Conv
        FusePatterns                        decomposed HardSwish, GELU, LayerNorm... as one op, where the
                                            target has a kernel for the op (`Target.has_kernel`)
        fold_affine_pass                    Add/Sub/Mul/Div by per-channel constants into Conv/Gemm/MatMul
    InferShapes, NameFixPass                fresh shapes; unique names for the plan to refer to

The passes that change ops record what they removed and added (`Prepared.changes`, the card).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass, RemoveUnusedNodesPass

# onnxscript 0.7 exports the pass only from its module (its public `fold_constants` wraps it)
from onnxscript.optimizer._constant_folding import DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT, FoldConstantsPass

from qcompile.arrival import check_names_kept, imported_passes, take_in
from qcompile.data import InputSpec, model_input_specs
from qcompile.errors import QCompileError, first_line
from qcompile.ir_utils import const_array, name_of, onnx_opset, op_histogram
from qcompile.metrics import OutputKind, output_kinds
from qcompile.model_io import SOURCE_BYTES_KEY, ModelSource, check_serialised, load_model
from qcompile.passes.clamp_mask import ClampAttentionMask
from qcompile.passes.cleanup import cleanup_passes
from qcompile.passes.expand_ops import EXPANSIONS, ExpandOps
from qcompile.passes.fold_affine import fold_affine_pass
from qcompile.passes.fold_batchnorm import fold_batchnorm_pass
from qcompile.passes.fuse_patterns import FUSED_OPS, FusePatterns
from qcompile.passes.import_qdq import floor_at_zero, remove_floors
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.layout_transposes import PushTransposes
from qcompile.passes.upcast_half import UpcastHalf
from qcompile.passes.upgrade_opset import UpgradeOpset
from qcompile.pipeline import CHANGES_KEY, ReadOnlyPass, Recorded, run_passes
from qcompile.plan import QuantPlan
from qcompile.quant_form import QuantForm, detect_form
from qcompile.runtime import SessionSource
from qcompile.targets import Target

__all__ = [
    "Prepared",
    "prepare",
    "prepare_passes",
    "canonical_passes",
    "FOLD_OUTPUT_LIMIT",
    "reference_source",
    "fold_constants_pass",
]

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
    ops_before: Counter  # op histogram of the user's model
    ops_after: Counter  # ... and of the prepared float graph
    inputs: tuple[InputSpec, ...]
    changes: tuple[tuple[str, Counter, Counter], ...] = ()  # (pass, ops removed, ops added)
    float_check: dict | None = None  # the check of the prepared graph against the user's (qcompile.float_check)
    kinds: dict[str, OutputKind] = field(default_factory=dict)  # what each output holds (qcompile.metrics)
    form: QuantForm = field(default_factory=QuantForm)  # the quantization the user's model carried
    imported: QuantPlan | None = None  # its Q/DQ as a plan (then `model` is the graph beneath them)
    fixed_inputs: dict[str, Any] = field(default_factory=dict)  # integer inputs made constants (static targets)
    static_shapes: dict[str, list[int]] = field(default_factory=dict)  # symbolic input shapes fixed (static targets)

    def model_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)

    def describe(self) -> dict:
        """Op counts before and after, and what each pass removed and added (for the card)."""
        return {
            "nodes_before": sum(self.ops_before.values()),
            "nodes_after": sum(self.ops_after.values()),
            "ops_before": dict(sorted(self.ops_before.items())),
            "ops_after": dict(sorted(self.ops_after.items())),
            "float_check": self.float_check,
            "passes": [
                {"pass": p, "removed": dict(sorted(r.items())), "added": dict(sorted(a.items()))}
                for p, r, a in self.changes
            ],
        }


def prepare_passes(target: Target, canonicalize: bool = True) -> ir.passes.Sequential:
    """Float in, float out: the passes that clean a graph before quantizing it (without
    `canonical_passes` when `canonicalize` is off)."""
    return ir.passes.Sequential(
        UpgradeOpset(target.preferred_opset, target.min_opset),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        UpcastHalf(),
        CheckWeights(),
        Recorded("constant folding", ir.passes.Sequential(fold_constants_pass(), RemoveUnusedNodesPass())),
        InferShapes(),
        Recorded("no-ops", cleanup_passes()),
        Recorded("batchnorm folding", fold_batchnorm_pass()),
        Recorded("op expansion", ExpandOps(expandable_ops(target))),  # the target lacks the op: not optional
        *([canonical_passes(target), InferShapes()] if canonicalize else []),
        NameFixPass(),
    )


def expandable_ops(target: Target) -> list[str]:
    """Ops the target has no kernel for but can run spelt out (`passes.expand_ops`)."""
    return [
        e.op_type
        for e in EXPANSIONS
        if not target.has_kernel(e.op_type) and all(target.has_kernel(op) for op in e.uses)
    ]


def canonical_passes(target: Target, steps: int = 3) -> ir.passes.PassManager:
    """The canonical float graph: one fold can open another (a Transpose moved off a Sub, the Sub
    folded into its Conv), so the list runs until nothing changes, at most `steps` times."""
    return ir.passes.PassManager(
        [
            Recorded("layout transposes", PushTransposes()),
            Recorded("batchnorm folding", fold_batchnorm_pass()),
            # before affine folding, which would otherwise take the constant Div of x·Clip(x + 3)/6
            Recorded("pattern fusion", FusePatterns([f.op_type for f in FUSED_OPS if target.has_kernel(f.op_type)])),
            Recorded("affine folding", fold_affine_pass()),
            Recorded("attention mask clamp", ClampAttentionMask()),
        ],
        steps=steps,
    )


SMALL_CONSTANT_OF_SHAPE = 64  # elements


def _small_constant_of_shape(node: ir.Node) -> bool | None:
    """Fold a ConstantOfShape whose output is a handful of values (a shape computation's mask or
    ones), which the folder otherwise keeps to spare model size; leave the rest to its own rules."""
    if node.op_type != "ConstantOfShape" or not node.inputs or node.inputs[0] is None:
        return None
    shape = node.inputs[0].const_value
    if shape is None:
        return None
    return bool(int(np.prod(shape.numpy())) <= SMALL_CONSTANT_OF_SHAPE) or None


def fold_constants_pass() -> FoldConstantsPass:
    return FoldConstantsPass(
        shape_inference=False,
        input_size_limit=DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
        output_size_limit=FOLD_OUTPUT_LIMIT,
        should_fold=_small_constant_of_shape,
    )


class CheckWeights(ReadOnlyPass):
    """Every in-memory weight's stored data matches its declared type and shape (a corrupt file's
    would otherwise fail deep inside a library pass)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            if not isinstance(value.const_value, ir.ExternalTensor):
                const_array(value)  # raises QCompileError naming the tensor
        return ir.passes.PassResult(model, False)


def prepare(
    source: ModelSource, target: Target, canonicalize: bool = True, requantize: bool = False, dequantize: bool = False
) -> Prepared:
    """Load `source` (never modified), check it, and run `prepare_passes(target)` on a private copy.

    A model that arrives quantized in QDQ form (or QOperator form, rewritten to QDQ first by
    `qcompile.passes.qoperator_to_qdq`) is imported (`qcompile.passes.import_qdq`): the
    graph beneath its Q/DQ is the float graph and the reference, its Q/DQ the plan.  Its tensor
    names must survive, so only the passes that keep them run, and never the canonical stage,
    which would change the weights the file's scales were chosen for.  With `requantize` the
    plan is dropped and the float graph is prepared as any other.  A dynamically quantized model
    is refused unless `dequantize`: then its integer ops become the float ops their stored weights
    stand for (`qcompile.passes.dequantize_dynamic`), to calibrate afresh."""
    model = load_model(source)
    _check_input(source if isinstance(source, (str, os.PathLike)) else _session_source(model).model)
    float_bytes = model.meta.get(SOURCE_BYTES_KEY)
    form = detect_form(model)
    opset_before = onnx_opset(model)
    ops_before = op_histogram(model)
    imported = take_in(model, form, dequantize)
    floors = floor_at_zero(model, imported) if imported is not None else []
    if floors and imported is not None:
        imported.meta["reference_relus"] = [name_of(r.inputs[0]) for r in floors if r.inputs[0] is not None]
    float_ref = _session_source(model)  # with the Relus an imported file's Q/DQ perform
    remove_floors(model, floors)
    float_bytes = float_bytes if float_bytes is not None else len(float_ref.model)
    inputs = tuple(model_input_specs(model))
    keep_names = imported is not None and not requantize
    run_passes(imported_passes(target, CheckWeights()) if keep_names else prepare_passes(target, canonicalize), model)
    if keep_names and imported is not None:
        check_names_kept(model, imported)
    changes = tuple((name, c["removed"], c["added"]) for name, c in model.meta.pop(CHANGES_KEY, {}).items())
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    name = path.stem if path else "model"
    return Prepared(
        model,
        float_ref,
        float_bytes,
        name,
        path,
        opset_before,
        ops_before,
        op_histogram(model),
        inputs,
        changes,
        kinds=output_kinds(model),
        form=form,
        imported=imported if keep_names else None,
    )


def reference_source(reference: ModelSource, prepared: Prepared) -> SessionSource:
    """The user's reference model (for an imported one) as ORT loads it; its inputs and outputs
    must be the compiled model's."""
    model = load_model(reference)
    want_in = [i.name for i in prepared.inputs]
    got_in = [v.name or "" for v in model.graph.inputs if not v.is_initializer()]
    want_out, got_out = (
        [v.name or "" for v in prepared.model.graph.outputs],
        [v.name or "" for v in model.graph.outputs],
    )
    if sorted(want_in) != sorted(got_in) or sorted(want_out) != sorted(got_out):
        raise QCompileError(
            f"the reference model's inputs {got_in} and outputs {got_out} are not the model's ({want_in}, {want_out})"
        )
    if not detect_form(model).is_float:
        raise QCompileError(f"the reference model is quantized too ({detect_form(model).summary()}); pass a float one")
    return _session_source(model)


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
