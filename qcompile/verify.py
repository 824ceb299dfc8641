"""Stage 3, verify: run the compiled model next to its float original on real data.

Per output, over all evaluation samples together, the figures of `qcompile.metrics` (SQNR,
worst-channel SQNR, cosine, max errors, top-1 agreement for class and sequence scores), and,
when the data carries `labels` and the first output holds class scores, the top-1 accuracy
of each model.  `verify` adds the median latency of both models and the count of integer vs
float compute kernels in the graph ONNX Runtime runs after its own fusions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompile.budget import Budget, BudgetResult, stacked, stacked_labels
from qcompile.data import HoldoutSplit, InputSpec, Sample, iter_samples
from qcompile.metrics import OutputFigures, OutputKind, output_figures
from qcompile.runtime import SessionSource, fused_op_counts, make_session, median_latency_ms, run_session
from qcompile.streams import Streams

__all__ = [
    "Fidelity",
    "compare",
    "figures",
    "EvaluationSet",
    "Verification",
    "verify",
    "integer_kernels",
    "measure_latencies",
    "run_outputs",
]


@dataclass
class Fidelity:
    samples: int
    outputs: list[OutputFigures]
    float_accuracy: float | None = None
    quant_accuracy: float | None = None
    streams: dict | None = None  # a recurrent model's samples run as streams (`qcompile.streams.Streams.describe`)

    def to_dict(self) -> dict:
        return asdict(self)


def run_outputs(
    model: Any, samples: Sequence[Sample], progress=None, streams: Streams | None = None
) -> dict[str, list[np.ndarray]]:
    """Every output of `model` on every sample (as `streams`, when given: each continuing sample fed
    the model's own outputs on the one before); the session is gone when this returns.
    `model` is anything `make_session` takes, or a runner of a target's own file (`Lowered.runner`)."""
    order = progress or (lambda it: it)
    runner = hasattr(model, "outputs") and callable(model.outputs)
    if runner and streams is None:
        return model.outputs(list(samples), progress)
    if runner:  # a step at a time: each may be fed the outputs of the one before
        step = lambda s: {n: runs[0] for n, runs in model.outputs([s]).items()}  # noqa: E731
    else:
        session = make_session(model)
        names = [o.name for o in session.get_outputs()]
        step = lambda s: run_session(session, s, names)  # noqa: E731
    results = streams.run(step, samples, order=order) if streams else [step(s) for s in order(samples)]
    out: dict[str, list[np.ndarray]] = {}
    for result in results:
        for n, arr in result.items():
            out.setdefault(n, []).append(np.asarray(arr))
    return out


def compare(
    float_model: Any,
    quant_model: Any,
    samples: Sequence[Sample],
    progress: Callable[[Iterable], Iterable] | None = None,
    kinds: Mapping[str, OutputKind] | None = None,
    budget: Budget | None = None,
) -> tuple[Fidelity, BudgetResult | None]:
    """Run the float model, then the quantized one (anything `make_session` takes), on `samples`.

    One session exists at a time, so peak memory holds one model's weights, not both.
    """
    ref = run_outputs(float_model, samples, progress)
    streams = Streams.of(samples, ref, kinds or {}, "the evaluation data")
    fidelity, result = figures(ref, run_outputs(quant_model, samples, progress, streams), samples, kinds, budget)
    fidelity.streams = streams.describe() if streams else None
    return fidelity, result


def figures(
    ref: dict[str, list[np.ndarray]],
    got: dict[str, list[np.ndarray]],
    samples: Sequence[Sample],
    kinds: Mapping[str, OutputKind] | None = None,
    budget: Budget | None = None,
) -> tuple[Fidelity, BudgetResult | None]:
    """The fidelity figures of outputs `got` against `ref` (both: name → one array per sample)."""
    kinds = kinds or {}
    outputs = [
        output_figures(n, ref[n], got[n], kinds.get(n, OutputKind()))
        for n in ref
        if ref[n] and np.asarray(ref[n][0]).dtype.kind == "f"
    ]
    fid = Fidelity(len(samples), outputs)
    labels = stacked_labels(samples)
    first = next(iter(ref), None)
    one_class_each = isinstance(labels, np.ndarray) and labels.shape == (len(samples),)
    if first is not None and one_class_each and kinds.get(first, OutputKind()).scores and _per_sample(ref[first]):
        fid.float_accuracy = float(np.mean([np.argmax(x) for x in ref[first]] == labels))
        fid.quant_accuracy = float(np.mean([np.argmax(x) for x in got[first]] == labels))
    if budget is None:
        return fid, None
    ref_stacked = {n: stacked(v) for n, v in ref.items()}
    return fid, budget.evaluate(ref_stacked, {n: stacked(v) for n, v in got.items()}, kinds, labels)


def _per_sample(outputs: list[np.ndarray]) -> bool:
    """Class scores, one set per sample ([1, K] or [K]), not per position of a sequence."""
    shape = np.shape(outputs[0]) if outputs else ()
    return len(shape) >= 1 and int(np.prod(shape[:-1])) == 1  # [K], [1, K], [1, 1, K]: not [1, T, C]


@dataclass(frozen=True)
class EvaluationSet:
    """The samples verification runs on, and where they came from."""

    samples: list[Sample]
    held_out: bool
    source: str

    @classmethod
    def choose(cls, evaluation: Any, split: HoldoutSplit | None, inputs: Sequence[InputSpec]) -> EvaluationSet:
        """`evaluation` when given; else the split's held-out samples (once calibration has consumed it)."""
        if split is None:
            return cls(list(iter_samples(evaluation, list(inputs), what="evaluation data")), False, "evaluation data")
        if split.held:
            return cls(split.held, True, "held-out calibration split")
        return cls(split.first, False, "calibration samples (too few to hold any out)")

    def describe(self) -> dict[str, Any]:
        return {"held_out": self.held_out, "source": self.source, "samples": len(self.samples)}


@dataclass(frozen=True)
class Verification:
    fidelity: Fidelity
    evaluation: EvaluationSet
    ort_kernels: dict[str, int]
    latency_ms: dict[str, dict[str, float]] | None = None
    budget: BudgetResult | None = None
    reference: str = "float"  # what the outputs were compared with: "float", "dequantized" or "given"
    qdq_fidelity: Fidelity | None = None  # a target with its own file: the same plan's QDQ model on ORT
    qdq_outputs: dict[str, list[np.ndarray]] | None = None
    deployed_outputs: dict[str, list[np.ndarray]] | None = None  # ... and the target's file on its runtime
    streams: Streams | None = None  # how the samples ran as streams (a recurrent model's `feedback`)


def verify(
    float_ref: SessionSource,
    quant_ref: SessionSource,
    evaluation: EvaluationSet,
    *,
    measure_latency: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
    kinds: Mapping[str, OutputKind] | None = None,
    budget: Budget | None = None,
    reference: str = "float",
    runner: Any = None,
) -> Verification:
    """Fidelity on `evaluation`, ORT's kernel choice, and (optionally) the latency of both models;
    `reference` names what `float_ref` is (the float model, an imported model's dequantized graph,
    or a reference the user gave).  With `runner` (a target's own file on its runtime), fidelity and
    budget are that runner's, and the QDQ model on ORT is measured beside it."""
    kernels = integer_kernels(quant_ref)
    if runner is None:
        fidelity, budget_result = compare(float_ref, quant_ref, evaluation.samples, progress, kinds, budget)
        latency = None
        if measure_latency and evaluation.samples:
            latency = measure_latencies(float_ref, quant_ref, evaluation.samples[0])
        return Verification(fidelity, evaluation, kernels, latency, budget_result, reference)
    samples = evaluation.samples
    ref = run_outputs(float_ref, samples, progress)
    streams = Streams.of(samples, ref, kinds or {}, "the evaluation data")
    qdq = run_outputs(quant_ref, samples, progress, streams)
    deployed = run_outputs(runner, samples, progress, streams)
    fidelity, budget_result = figures(ref, deployed, samples, kinds, budget)
    qdq_fidelity, _ = figures(ref, qdq, samples, kinds)
    fidelity.streams = qdq_fidelity.streams = streams.describe() if streams else None
    return Verification(
        fidelity, evaluation, kernels, None, budget_result, reference, qdq_fidelity, qdq, deployed, streams
    )


def integer_kernels(quant: SessionSource) -> dict[str, int]:
    """Integer vs float compute kernels in the graph ORT runs after its own fusions."""
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = Path(tmp) / "optimized.onnx"
        make_session(replace(quant, unfused_qdq=False), optimized_model_path=opt_path)  # what ORT fuses
        return fused_op_counts(onnx.load(str(opt_path), load_external_data=False).graph.node)


def measure_latencies(
    float_ref: SessionSource, quant_ref: SessionSource, sample: Sample
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each model with one thread and with ORT's default threads, one session at a time."""
    return {
        kind: {str(t or "default"): median_latency_ms(make_session(ref, threads=t), sample) for t in (1, None)}
        for kind, ref in (("float", float_ref), ("quantized", quant_ref))
    }
