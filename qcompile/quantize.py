"""Stage 2, quantize: calibrate, plan, insert Q/DQ, fold scales, check the target's rules.

calibrate            analysis → CalibrationResult (ranges per tensor)
ApplyObservedShapes  pass: dtypes static inference missed, from what calibration saw
select_precision     analysis → a decision per node (policy, user pins)
assign_specs         analysis → QuantPlan (a QuantSpec per quantized tensor)
InsertQDQ, FoldScales  passes, composed with onnx-ir's Sequential
CheckLegality        read-only pass: the target's rules, before anything is written
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from qcompile.config import CompileConfig
from qcompile.data import LABELS_KEY, Sample
from qcompile.deadline import Deadline
from qcompile.ir_utils import onnx_opset
from qcompile.model_io import EXTERNAL_DATA_KEY, EXTERNAL_DATA_THRESHOLD, check_serialised, weights_nbytes
from qcompile.passes.assign_specs import assign_specs
from qcompile.passes.calibrate import ApplyObservedShapes, CalibrationResult, calibrate
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.passes.select_precision import select_precision
from qcompile.pipeline import run_passes
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.prepare import Prepared
from qcompile.runtime import SessionSource
from qcompile.search import DEFAULT_BUDGET, SearchReport, default_margin, hybrid_search
from qcompile.search_split import SearchSplit
from qcompile.selective import selective_search
from qcompile.targets.legality import CheckLegality

__all__ = ["Quantized", "quantize", "SEARCH_SAMPLES"]

SEARCH_SAMPLES = 8  # calibration samples the precision search evaluates on (set aside from calibration)


@dataclass(frozen=True)
class Quantized:
    """The quantized model, its plan, what calibration saw, and the model as ORT loads it."""

    model: ir.Model
    plan: QuantPlan
    calibration: CalibrationResult
    session: SessionSource
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # holds spilled weights
    search: SearchReport | None = None  # the hybrid or selective policy's search


def quantize(prepared: Prepared, samples: Iterable[Sample], config: CompileConfig) -> Quantized:
    """Quantize `prepared.model` in place for `config.target`, calibrating on `samples`."""
    model, target = prepared.model, config.target
    kept = SearchSplit(samples, SEARCH_SAMPLES if config.policy != "naive" else 0)

    def calibrated(data: Iterable[Sample]) -> CalibrationResult:
        return calibrate(
            model,
            data,
            calibrator=config.calibrator,
            progress=config.progress_bar("calibrate"),
            executor=config.executor,
            alternatives=config.policy == "selective",
        )

    calib = calibrated(kept)
    if kept.too_few:  # nothing to spare: calibrate on every sample, the search's too
        calib = calibrated(kept.samples + kept.rest)
    run_passes(ApplyObservedShapes(calib), model)
    decisions = select_precision(model, target, config.policy, config.plan, observed=calib.dtypes)

    def assign(calib: CalibrationResult, decisions: Mapping[str, NodeDecision]) -> QuantPlan:
        return assign_specs(model, target, calib, decisions, per_channel=config.per_channel, pinned=config.plan)

    specs = assign(calib, decisions)
    search = None
    if config.policy != "naive":
        budget = config.budget or DEFAULT_BUDGET
        margin = default_margin(budget) if config.margin is None else config.margin
        pins = set(config.plan.nodes) if config.plan else set()
        bar = config.progress_bar("rank candidates", unit="candidate")
        deadline = Deadline(config.time_budget)
        timed = config.measure_latency and kept.samples
        speed_sample = {k: v for k, v in kept.samples[0].items() if k != LABELS_KEY} if timed else None
        if config.policy == "hybrid":
            decisions, search = hybrid_search(
                model, specs, target, kept.samples, prepared.kinds, budget, margin, pins, bar, config.executor, deadline
            )
        else:
            decisions, calib, search = selective_search(
                model,
                calib,
                decisions,
                target,
                kept.samples,
                prepared.kinds,
                budget,
                margin,
                assign,
                pins,
                bar,
                config.executor,
                deadline,
                speed_sample,
            )
        search.unseen = not kept.too_few
        specs = assign(calib, decisions)
    meta = {
        "target": target.name,
        "calibrator": calib.calibrator,
        "policy": config.policy,
        **specs.meta,
        "opset": onnx_opset(model),
    }
    if search is not None:
        meta["search"] = {k: v for k, v in search.describe().items() if k not in ("table", "trials")}
    plan = QuantPlan(specs.tensors, specs.nodes, meta)
    run_passes(ir.passes.Sequential(InsertQDQ(plan), FoldScales(plan), CheckLegality(plan, target)), model)
    scratch = _spill_weights(model)
    session = SessionSource.of(model)
    if session.data_folder is None:  # else the checker runs on the written file, in save()
        check_serialised(session.model_bytes())
    return Quantized(model, plan, calib, session, scratch, search)


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
