"""The public entry point: `compile(model, target=..., calibration=...)`.

prepare (qcompile.prepare)   → Prepared:     the clean float graph
quantize (qcompile.quantize) → Quantized:    calibrated, planned, Q/DQ inserted, scales folded, legal
verify (qcompile.verify)     → Verification: fidelity on held-out data, kernels, latency
build_card (qcompile.card)   → the quantization card
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from qcompile.atomic import StagedFolder
from qcompile.budget import Budget, parse_metric
from qcompile.card import build_card, render_markdown
from qcompile.card_deployment import UNFUSED_NOTE
from qcompile.config import CompileConfig
from qcompile.data import HoldoutSplit, Sample, iter_samples
from qcompile.errors import QCompileError, QCompileWarning
from qcompile.float_check import FLOAT_TOLERANCE, float_drift, peek
from qcompile.model_io import ModelSource, check_serialised, save_model, to_graphsurgeon
from qcompile.plan import QuantPlan, json_safe
from qcompile.prepare import Prepared, prepare, reference_source
from qcompile.quantize import quantize
from qcompile.report import plots, render_html
from qcompile.specialise import check_fixed, fix_integer_inputs
from qcompile.streams import STREAM_RUN, with_feedback
from qcompile.targets import Lowered, Target, get_target
from qcompile.verdict import problems
from qcompile.verify import EvaluationSet, Verification, verify

__all__ = ["compile", "CompileResult"]


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
    lowered: dict[str, bytes] = field(default_factory=dict, repr=False)  # the target's own files ("{stem}" named)

    def to_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)

    def to_graphsurgeon(self) -> Any:  # an onnx_graphsurgeon.Graph
        return to_graphsurgeon(self.model)

    def save(self, directory: str | os.PathLike, report: bool = False) -> dict[str, Path]:
        """Write the model, plan and card into `directory`: all of them or, if interrupted, none.
        With a precision search, the card's plots too; with `report`, `card.html` (plots inlined)."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise QCompileError(f"output folder {out} is a file")
        model_name = f"{self.stem}.{self.target.name}.onnx"
        if self.source is not None and (out / model_name).resolve() == self.source.resolve():
            raise QCompileError(f"refusing to overwrite the input model {self.source}")
        images = plots(self.card)
        if images:
            self.card["search"]["plots"] = list(images)
        markdown_text = render_markdown(self.card)
        texts = {
            "plan.json": self.plan.to_json() + "\n",
            "card.json": json.dumps(json_safe(self.card), indent=1, default=str, allow_nan=False) + "\n",
            "card.md": markdown_text,
        }
        if report:
            texts["card.html"] = render_html(markdown_text, images, f"Quantization card: {self.stem}")
        with StagedFolder(out) as stage:
            save_model(self.model, stage.file(model_name))
            check_serialised(stage.file(model_name))  # by path: external data is checked, not inlined
            for name, text in texts.items():
                stage.file(name).write_text(text)
            for name, data in images.items():
                stage.file(name).write_bytes(data)
            for name, data in self.lowered.items():
                stage.file(name.format(stem=self.stem)).write_bytes(data)
            stage.commit(order=[model_name + ".data", model_name])
        self.files = {
            "model": out / model_name,
            "plan": out / "plan.json",
            "card_json": out / "card.json",
            "card_md": out / "card.md",
            **{name.removesuffix(".png"): out / name for name in images},
        }
        if report:
            self.files["card_html"] = out / "card.html"
        for name in self.lowered:
            self.files[name.format(stem=self.stem)] = out / name.format(stem=self.stem)
        return self.files


def deployment_section(lowered: Lowered, verification: Verification) -> dict[str, Any]:
    """The card's account of a target's own file: what it holds, its runtime, the same plan's QDQ
    model on ORT beside it, and the other runtimes' agreement with that QDQ model."""
    section = dict(lowered.summary)
    if verification.qdq_fidelity is not None:
        section["qdq_on_ort"] = verification.qdq_fidelity.to_dict()
    qdq, deployed = verification.qdq_outputs, verification.deployed_outputs
    if lowered.check is not None and qdq is not None and deployed is not None:
        section["runtimes_vs_qdq"] = lowered.check(verification.evaluation.samples, qdq, deployed, verification.streams)
    return section


def _budget(metric: str | Callable[..., float] | None, floor: float | None, max_drop: float | None) -> Budget | None:
    if floor is None and max_drop is None:
        if metric is not None:
            raise QCompileError("a metric needs a bound: give floor= (--floor) or max_drop= (--max-drop)")
        return None
    return Budget(parse_metric(metric, task=max_drop is not None), floor, max_drop)


def _arrival_note(prepared: Prepared, dequantize: bool, has_reference: bool) -> str | None:
    """What stderr says of a model that arrived quantized or in half precision."""
    form = prepared.form
    if form.quantized:
        if form.kinds == ("weight-only",):
            kept = "kept as it is, no activation quantization added"
        elif dequantize:
            kept = "its weights dequantized, calibrated afresh"
        else:
            kept = "its scales are kept (--requantize calibrates afresh)" if prepared.imported else "calibrated afresh"
        against = "the reference model given" if has_reference else "its dequantized graph"
        return f"the model arrived quantized ({form.summary()}): {kept}; fidelity is against {against}"
    if "float16" in form.kinds:
        half = "the model holds float16/bfloat16 weights: compiled in float32 around its int8 kernels"
        return f"{half}, its inputs and outputs keep their half type"
    return None


def _checked(prepared: Prepared, sample: Sample | None, source: ModelSource, config: CompileConfig) -> Prepared:
    """`prepared`, with its float graph checked against the user's on the first calibration sample;
    if the canonical stage changed what the model computes, prepared again without it."""
    if sample is None or not prepared.changes:
        return prepared
    drift = float_drift(prepared, sample)
    if drift <= FLOAT_TOLERANCE:
        return dataclasses.replace(prepared, float_check={"sample": 0, "max_relative_difference": drift})
    warnings.warn(
        QCompileWarning(
            f"the canonical float graph differs from the model by {drift:.2g} (relative) on calibration sample 0; "
            "compiling without the canonical stage (this is a qcompile bug: please report it)"
        ),
        stacklevel=3,
    )
    plain = prepare(source, config.target, canonicalize=False)
    return dataclasses.replace(
        plain, float_check={"sample": 0, "max_relative_difference": drift, "canonical_stage": "skipped"}
    )


def compile(
    model: ModelSource,
    target: str | Target = "ort-cpu",
    calibration: str | os.PathLike | Iterable[Sample] | None = None,
    evaluation: str | os.PathLike | Iterable[Sample] | None = None,
    *,
    plan: QuantPlan | str | os.PathLike | None = None,
    per_channel: bool = True,
    bias_correction: bool = True,
    calibrator: str = "minmax",
    policy: str = "naive",
    target_options: dict[str, Any] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    progress: bool | None = None,
    measure_latency: bool = True,
    executor: Executor | None = None,
    canonicalize: bool = True,
    metric: str | Callable[..., float] | None = None,
    floor: float | None = None,
    max_drop: float | None = None,
    margin: float | None = None,
    time_budget: float | None = None,
    search_samples: int | None = None,
    requantize: bool = False,
    reference: ModelSource | None = None,
    dequantize: bool = False,
    feedback: Mapping[str, str] | None = None,
) -> CompileResult:
    """Compile a float ONNX model to int8 for `target`, and verify it against the float model.

    Args:
        model: the float model: a path to an `.onnx` file (external data beside it is read
            in place), bytes, an `onnx.ModelProto`, an `onnx_ir.Model` or an
            `onnx_graphsurgeon.Graph`.  The caller's object is never modified.
        target: a target name (`qcompile.targets.TARGET_NAMES`) or a `Target`.
        calibration: calibration samples: an `.npz`/`.npy` file, a folder of them, or an
            iterable of `{input_name: array}` dicts (see `qcompile.data`).  Read once, as a stream.
        evaluation: samples to verify on, in the same forms.  Without it, every fifth
            calibration sample is held out for verification (at most 128 MB of them).
        plan: a `QuantPlan` (or the path of a `plan.json`) whose node decisions and tensor
            specs override the policy: pins.
        per_channel: per-channel weight scales where the target supports them (else per tensor).
        bias_correction: add to each Conv/ConvTranspose/Gemm bias the mean output shift that
            rounding its weight causes, measured on the calibration data (`qcompile.passes.correct_bias`).
        calibrator: `"minmax"`, `"ema"`, `"percentile"`, `"mse"` or `"entropy"` (`qcompile.calibrators`);
            under the selective policy, the one its search starts from (not ema).
        policy: `"naive"` (int8 wherever the target can), `"hybrid"` (int8 but the most sensitive
            groups in float, `qcompile.search`) or `"selective"` (also a calibrator per tensor,
            float only where calibration cannot meet the budget, `qcompile.selective`).
        target_options: options for the target's factory (e.g. `{"reduce_range": True}` for ort-cpu).
        input_shapes: static sizes for inputs with symbolic dimensions, for targets with static graphs
            (`{"x": [1, 3, 224, 224]}`; else the first calibration sample's, where the target allows it).
        progress: progress bars on stderr; None shows them when stderr is a terminal.
        measure_latency: time both models (1 thread and ORT's default) for the card.
        executor: any `concurrent.futures.Executor` (process pool, a Dask client's
            `get_executor()`) to calibrate on and to rank the precision search's candidates on;
            the output is the same byte for byte.
        canonicalize: rewrite the float graph into its canonical form first (layout Transposes
            cancelled, affine chains and BatchNorm folded into Conv/Gemm, decomposed activations
            as single ops; see `qcompile.prepare`).  Off, only the clean-up passes run.
        metric: what the budget is set on (`qcompile.budget`): a comparison metric of the
            float and quantized outputs (`"fidelity"`, the default: the worst channel SQNR of
            any output; `"sqnr"`, `"cosine"`, `"top1"`, `"max-rel-error"`, each optionally
            `":OUTPUT"`), a task metric on labels (`"accuracy"`), `"file.py:function"`, or a
            callable `f(float_outputs, quantized_outputs)` (with `max_drop`: `f(outputs, labels)`).
        floor: the comparison metric must stay at or above this on the evaluation data.
        max_drop: the task metric may fall at most this far below the float model's value.
        margin: what the precision search keeps in reserve above the budget on its own
            samples, for data it did not see (default: 1 for dB metrics, 0.01 for others).
        time_budget: seconds the precision search may take; when they run out, the best
            choice found so far wins and the card says the search was cut (the plan then
            depends on the machine's speed).
        search_samples: how many calibration samples the precision search sets aside to judge
            on (default 8; more cost search time in proportion and judge ranges more like the
            held-out check will).
        requantize: for a model that arrives quantized (QDQ), calibrate and choose precision
            afresh on the float graph beneath its Q/DQ instead of keeping the file's scales.
        reference: the float model to compare with (same inputs and outputs), for a model that
            arrives quantized; without it, such a model is compared with its dequantized graph
            and the card says so.
        dequantize: for a dynamically quantized model (ConvInteger, MatMulInteger, computed
            activation scales), take its stored weights back to float and compile afresh.
        feedback: a recurrent model's states, `{output: input}`: each output is fed to its input
            at the next step (`qcompile.streams`).  The samples are then read as streams, in order,
            each holding the state the float model carries into it; search and verification run
            every model under test on its own state, so that its error builds up as deployed.  The
            held-out split and the search take runs of consecutive samples.

    Returns:
        A `CompileResult`: the int8 model (`.model`, `.to_proto()`, `.to_graphsurgeon()`), its
        `.plan`, and its `.card` (fidelity, sizes, kernels, latency); `.save(folder)` writes
        them all.

    Raises:
        QCompileError: for input the user can fix, with one line naming the file, tensor or node.

    Example::

        result = qcompile.compile("model.onnx", "ort-cpu", calibration="calib.npz")
        print(result.card["fidelity"]["outputs"][0]["sqnr_db"])
        result.save("out/")
    """
    tgt = get_target(target, **(target_options or {}))
    pinned = QuantPlan.load(plan) if isinstance(plan, (str, os.PathLike)) else plan
    config = CompileConfig(
        tgt,
        plan=pinned,
        per_channel=per_channel,
        bias_correction=bias_correction,
        calibrator=calibrator,
        policy=policy,
        progress=progress,
        measure_latency=measure_latency,
        executor=executor,
        canonicalize=canonicalize,
        budget=_budget(metric, floor, max_drop),
        margin=margin,
        time_budget=time_budget,
        search_samples=search_samples,
    )
    prepared = prepare(model, config.target, config.canonicalize, requantize=requantize, dequantize=dequantize)
    # a model that arrived quantized is compared with the float graph beneath its quantization
    float_ref, reference_kind = prepared.float_ref, "dequantized" if prepared.form.quantized else "float"
    if (note := _arrival_note(prepared, dequantize, reference is not None)) is not None:
        warnings.warn(QCompileWarning(note), stacklevel=2)
    if reference is not None:
        float_ref, reference_kind = reference_source(reference, prepared), "given"
    if feedback:
        prepared = dataclasses.replace(prepared, kinds=with_feedback(prepared.model, prepared.kinds, feedback))
    first, samples = peek(iter_samples(calibration, list(prepared.inputs), what="calibration data"))
    prepared = _checked(prepared, first, model, config)
    if tgt.static_graph and first is not None:  # integer inputs (a sample rate, a mode) become constants
        prepared = fix_integer_inputs(
            prepared, first, input_shapes, tgt.explicit_shapes, scalars_only=tgt.keeps_integer_inputs
        )
        samples = check_fixed(samples, prepared.fixed_inputs, "calibration")
    # before calibration: a graph the target cannot take fails now, not after it
    early_files = tgt.precheck(prepared.model, tgt) if tgt.precheck is not None else {}

    split = HoldoutSplit(samples, run=STREAM_RUN if feedback else 1) if evaluation is None else None
    quantized = quantize(prepared, split.calibration() if split else samples, config)

    evaluation_set = EvaluationSet.choose(evaluation, split, prepared.inputs)
    if prepared.fixed_inputs:
        list(check_fixed(iter(evaluation_set.samples), prepared.fixed_inputs, "evaluation"))
    lowered = tgt.lower(quantized.model, tgt) if tgt.lower is not None else None
    verification = verify(
        float_ref,
        quantized.session,
        evaluation_set,
        measure_latency=config.measure_latency,
        progress=config.progress_bar("verify"),
        kinds=prepared.kinds,
        budget=config.budget,
        reference=reference_kind,
        runner=lowered.runner if lowered is not None else None,
    )

    card = build_card(prepared, quantized, verification, config.target, config.budget)
    if lowered is not None:
        card["deployment"] = deployment_section(lowered, verification)
        if quantized.session.unfused_qdq:
            card["deployment"]["qdq_unfused"] = UNFUSED_NOTE
    found = problems(card, quantized.plan)
    card["verdict"] = [{"problem": p.text, "advice": p.advice, "fails": p.fails} for p in found]
    for p in found:
        warnings.warn(QCompileWarning(f"{p.text}; {p.advice}"), stacklevel=2)
    return CompileResult(
        quantized.model,
        quantized.plan,
        card,
        config.target,
        prepared.name,
        prepared.source,
        scratch=quantized.scratch,
        lowered={**early_files, **(lowered.files if lowered is not None else {})},
    )
