"""The public entry point: `compile(model, target=..., calibration=...)`.

prepare (opset, constants, BatchNorm, no-ops, shapes, names)
→ calibrate → select precision → assign specs → insert Q/DQ → fold scales
→ legality → verify against the float original on held-out data → card.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from qcompile.card import build_card, measure_latencies, render_markdown
from qcompile.data import HoldoutSplit, iter_samples, model_input_specs
from qcompile.ir_utils import onnx_opset
from qcompile.errors import QCompileError, first_line
from qcompile.atomic import StagedFolder
from qcompile.model_io import (EXTERNAL_DATA_KEY, EXTERNAL_DATA_THRESHOLD, SOURCE_BYTES_KEY, ModelSource, load_model,
                               save_model, to_graphsurgeon, weights_nbytes)
from qcompile.passes.assign_specs import AssignSpecs
from qcompile.passes.calibrate import ApplyObservedShapes, Calibrate, CalibrationResult
from qcompile.passes.cleanup import RemoveNoOps
from qcompile.passes.fold_batchnorm import FoldBatchNorm
from qcompile.passes.fold_constants import FoldConstants
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.passes.lift_constants import LiftConstants
from qcompile.passes.name_nodes import NameNodes
from qcompile.passes.select_precision import SelectPrecision
from qcompile.passes.upgrade_opset import UpgradeOpset
from qcompile.pipeline import Pipeline
from qcompile.plan import QuantPlan
from qcompile.runtime import SessionSource
from qcompile.targets import Target, get_target
from qcompile.targets.legality import check_legality
from qcompile.verify import compare

__all__ = ["compile", "CompileResult", "prepare_pipeline"]


def _progress(enabled: bool | None, desc: str) -> Callable[[Iterable], Iterable]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return lambda it: it
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="sample", leave=False)


def prepare_pipeline(target: Target) -> Pipeline:
    """Float in, float out: the passes that clean a graph before quantizing it."""
    return Pipeline([
        UpgradeOpset(target.preferred_opset, target.min_opset),
        LiftConstants(),
        FoldConstants(),
        InferShapes(),
        RemoveNoOps(),
        FoldBatchNorm(),
        NameNodes(),
    ])


@dataclass
class CompileResult:
    """A compiled model with its plan and quantization card."""

    model: ir.Model
    plan: QuantPlan
    card: dict[str, Any]
    target: Target
    stem: str = "model"
    source: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # holds spilled weights

    def to_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)

    def to_graphsurgeon(self):
        return to_graphsurgeon(self.model)

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write the model, plan and card into `directory`: all of them or, if interrupted, none."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise QCompileError(f"output folder {out} is a file")
        model_name = f"{self.stem}.{self.target.name}.onnx"
        if self.source is not None and (out / model_name).resolve() == self.source.resolve():
            raise QCompileError(f"refusing to overwrite the input model {self.source}")
        texts = {
            "plan.json": self.plan.to_json() + "\n",
            "card.json": json.dumps(self.card, indent=1, default=str) + "\n",
            "card.md": render_markdown(self.card),
        }
        with StagedFolder(out) as stage:
            save_model(self.model, stage.file(model_name))
            _check_output(stage.file(model_name))  # by path: external data is checked, not inlined
            for name, text in texts.items():
                stage.file(name).write_text(text)
            stage.commit(order=[model_name + ".data", model_name])
        self.files = {"model": out / model_name, "plan": out / "plan.json", "card_json": out / "card.json",
                      "card_md": out / "card.md"}
        return self.files


def _spill_weights(model: ir.Model) -> tempfile.TemporaryDirectory | None:
    """Move the weights of a big model (or one whose input used external data) to a scratch data file.

    Sessions then read them from disk and `save` streams them, so the compiled model's
    weights are not held in Python memory while the float model runs for verification.
    """
    if not model.meta.get(EXTERNAL_DATA_KEY) and weights_nbytes(model) <= EXTERNAL_DATA_THRESHOLD:
        return None
    scratch = tempfile.TemporaryDirectory(prefix="qcompile-")
    ir.external_data.unload_from_model(model, scratch.name, "weights.data", size_threshold_bytes=1024)
    return scratch


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
        _check_output(model)
    except onnx.checker.ValidationError as e:
        raise QCompileError(f"the model fails onnx.checker: {first_line(e, 'invalid model')}") from e


def _check_output(model: bytes | str | os.PathLike) -> None:
    """onnx.checker on serialised bytes or a path; on what qcompile writes, a failure is a qcompile bug."""
    onnx.checker.check_model(model if isinstance(model, bytes) else os.fspath(model))


def _stem(source: ModelSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).stem
    return "model"


def compile(
    model: ModelSource,
    target: str | Target = "ort-cpu",
    calibration: Any = None,
    evaluation: Any = None,
    *,
    plan: QuantPlan | str | os.PathLike | None = None,
    per_channel: bool = True,
    calibrator: str = "minmax",
    policy: str = "naive",
    target_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    measure_latency: bool = True,
    executor: Executor | None = None,
) -> CompileResult:
    """Compile `model` for `target`, calibrating on `calibration` and verifying on `evaluation`.

    Without `evaluation`, every fifth calibration sample is held out for it.  Calibration
    runs on `executor` when one is given (any `concurrent.futures.Executor`: a process
    pool, a Dask client's `get_executor()`); the output is the same byte for byte.
    """
    tgt = get_target(target, **(target_options or {}))
    pinned = QuantPlan.load(plan) if isinstance(plan, (str, os.PathLike)) else plan
    float_model = load_model(model)
    float_ref = _session_source(float_model)  # weights in external data stay on disk
    _check_input(model if isinstance(model, (str, os.PathLike)) else float_ref.model)
    float_size = float_model.meta.get(SOURCE_BYTES_KEY, len(float_ref.model))
    work = float_model  # the float reference lives on as float_ref; the loaded model is ours to mutate
    opset_before = onnx_opset(work)
    hist_before = {n.op_type for n in work.graph}
    specs = model_input_specs(work)

    prepare_pipeline(tgt)(work)

    samples = iter_samples(calibration, specs, what="calibration data")
    split = HoldoutSplit(samples) if evaluation is None else None
    calib_stream = split.calibration() if split else samples
    qplan = QuantPlan(meta={"target": tgt.name, "calibrator": calibrator})
    calib = CalibrationResult()
    Pipeline([
        Calibrate(calib, calib_stream, calibrator=calibrator, progress=_progress(progress, "calibrate"),
                  executor=executor),
        ApplyObservedShapes(calib),
        SelectPrecision(qplan, tgt, policy, pinned),
        AssignSpecs(qplan, tgt, calib, per_channel=per_channel, pinned=pinned),
        InsertQDQ(qplan),
        FoldScales(qplan),
    ], given=("batchnorm_folded", "clean", "named"))(work)
    check_legality(work, qplan, tgt)
    scratch = _spill_weights(work)
    quant_ref = SessionSource.of(work)
    if quant_ref.data_folder is None:  # else the checker runs on the written file, in save()
        _check_output(quant_ref.model)

    if split is not None:
        eval_samples, held_out = (split.held, True) if split.held else (split.first, False)
        eval_source = "held-out calibration split" if held_out else "calibration samples (too few to hold any out)"
    else:
        eval_samples, held_out, eval_source = list(iter_samples(evaluation, specs, what="evaluation data")), False, "evaluation data"

    card = build_card(float_ref, quant_ref, float_size, work, qplan, tgt, calib)
    card["fidelity"] = compare(float_ref, quant_ref, eval_samples, _progress(progress, "verify")).to_dict()
    if measure_latency and eval_samples:
        card["latency_ms"] = measure_latencies(float_ref, quant_ref, eval_samples[0])
    card.update({
        "model": _stem(model),
        "opset": {"before": opset_before, "after": onnx_opset(work)},
        "ops_before": sorted(hist_before),
        "evaluation": {"held_out": held_out, "source": eval_source, "samples": len(eval_samples)},
    })
    qplan.meta["opset"] = onnx_opset(work)
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    return CompileResult(work, qplan, card, tgt, _stem(model), source, scratch=scratch)


