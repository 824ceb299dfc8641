"""A switchable fake-quant copy of the float graph, and the evaluator that runs it.

Each quantized tensor t is read through If(on_t, DequantizeLinear(QuantizeLinear(t)), t),
with on_t a boolean graph input; a tensor may carry several specs (a calibrator's each), each
behind its own switch, chained.  A configuration (which tensors are quantized, with which
spec) is one run with the switches set; nothing is rebuilt, so hundreds of candidates cost
hundreds of inference passes on the search samples.

Runs are independent: `Evaluator.run_many` sends batches of configurations to any
`concurrent.futures.Executor` (process pool, Dask); workers open the model from a file once and
run with one intra-op thread, as the evaluator's own session does, so every executor computes
the same floats and the search makes the same choices.  In process, the samples of one
configuration run side by side on the machine's cores (`SAMPLE_THREADS`), each still on one
thread: the same floats, and the sequential steps (greedy choice, give-back, calibrator
refinement), which no executor can spread, use every core (PP-OCR cls hybrid on 2 cores: 42.5 →
30 s for the whole compile).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from qcompile.budget import Budget, BudgetResult, jackknife_error, stacked, stacked_labels
from qcompile.data import LABELS_KEY, Sample
from qcompile.ir_utils import FreshNames, all_initializers, prepend, values_by_name
from qcompile.metrics import OutputKind
from qcompile.passes.bias_switch import bias_targets, switch_biases
from qcompile.passes.correct_bias import bias_shifts
from qcompile.passes.insert_qdq import qdq_params
from qcompile.passes.quant_groups import QuantGroup, quantized_tensors_when
from qcompile.plan import QuantPlan, QuantSpec
from qcompile.runtime import SessionSource, make_session, run_session
from qcompile.streams import Streams

__all__ = ["switchable_model", "Switches", "BASE", "Evaluator", "run_batch", "SEARCH_THREADS", "BATCH", "PROBE_SAMPLES"]

SEARCH_THREADS = 1
# in process, samples run this many at a time (ORT releases the GIL; each run keeps one thread)
SAMPLE_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
BATCH = 4  # configurations per task
# the float activations kept for the local measures (a tensor's own rounding error): those of the first
# search samples only (PP-OCRv5 rec: 218 probed tensors on 32 samples held 3.0 GiB of its 4.6 GiB peak)
PROBE_SAMPLES = 8
MAX_IN_FLIGHT = 4
_SESSIONS: dict[SessionSource, Any] = {}


Switches = dict[str, tuple[dict[str, str], str]]  # tensor → ({variant: its switch input}, the value readers see)
BASE = ""  # the variant of the plan's own spec


def switchable_model(
    model: ir.Model,
    plan: QuantPlan,
    variants: Mapping[str, Mapping[str, QuantSpec]] | None = None,
    shifts: Mapping[str, np.ndarray] | None = None,
) -> tuple[ir.Model, Switches]:
    """A copy of float `model` whose quantized tensors each read through switches, one per variant:
    the plan's spec (`BASE`) and any other spec `variants` names for the tensor (a calibrator's);
    the nodes `shifts` (`bias_shifts`) corrects read their corrected bias while their weight's switch is on
    (`qcompile.passes.bias_switch`)."""
    switchable = ir.from_proto(ir.to_proto(model))
    graph = switchable.graph
    biased = bias_targets(switchable, shifts or {})
    values, fresh = values_by_name(graph), FreshNames(graph)
    switches = {}
    for name, spec in sorted(plan.quantized_tensors().items()):
        value = values.get(name)
        if spec.dtype == "int32" or value is None or not spec.is_resolved:
            continue
        options = {BASE: spec, **dict(sorted((variants or {}).get(name, {}).items()))}
        switches[name] = _insert_switches(graph, value, options, fresh)
    switch_biases(graph, biased, {t: by_variant for t, (by_variant, _) in switches.items()})
    TopologicalSortPass()(switchable)
    return switchable, switches


def _insert_switches(
    graph: ir.Graph, value: ir.Value, options: Mapping[str, QuantSpec], fresh: FreshNames
) -> tuple[dict[str, str], str]:
    """value → If(on_1, QDQ_1(value), If(on_2, QDQ_2(value), ... value)), one switch per option.

    An `If`, not a `Where`: a Where computes both of its inputs whatever the switch, so every
    variant's Q/DQ ran on every tensor in every trial (PP-OCRv5 det at 320×320: 108-146 ms a
    sample against float's 18); an If runs the branch taken (31-45 ms), with the same floats."""
    name = value.name or ""
    readers, was_output = list(value.uses()), value.is_graph_output()
    nodes, by_variant, chosen = [], {}, value
    for variant, spec in reversed(list(options.items())):
        scale, zp, attrs = qdq_params(graph, name, spec, fresh)
        q_out = ir.Value(name=fresh(f"{name}_q"), type=ir.TensorType(ir.DataType[spec.dtype.upper()]))
        dq_out = ir.Value(name=fresh(f"{name}_dq"), type=value.type, shape=value.shape)
        kept = ir.Value(name=fresh(f"{name}_kept"), type=value.type, shape=value.shape)
        switch = ir.Value(name=fresh(f"switch_{name}"), type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
        picked = ir.Value(name=fresh(f"{name}_switched"), type=value.type, shape=value.shape)
        on = ir.Graph(
            [],
            [dq_out],
            nodes=[
                ir.Node("", "QuantizeLinear", [value, scale, zp], attributes=attrs, outputs=[q_out]),
                ir.Node("", "DequantizeLinear", [q_out, scale, zp], attributes=attrs, outputs=[dq_out]),
            ],
            name=fresh(f"{name}_on"),
        )
        off = ir.Graph([], [kept], nodes=[ir.Node("", "Identity", [chosen], outputs=[kept])], name=fresh(f"{name}_off"))
        branches = [ir.AttrGraph("then_branch", on), ir.AttrGraph("else_branch", off)]
        nodes.append(ir.Node("", "If", [switch], attributes=branches, outputs=[picked]))
        graph.inputs.append(switch)
        by_variant[variant], chosen = switch.name or "", picked
    producer, home = value.producer(), value.graph or graph  # switches stay main-graph inputs, read
    if producer is None:  # from any body; the nodes go where the value is defined
        prepend(home, nodes)
    else:
        home.insert_after(producer, nodes)
    for use in readers:
        use.node.replace_input_with(use.idx, chosen)
    if was_output:
        home.outputs[list(home.outputs).index(value)] = chosen
        value.name, chosen.name = fresh(f"{name}_float"), name
    return by_variant, chosen.name or ""


class Evaluator:
    """Runs configurations of the switchable model on the search samples, one session for all."""

    def __init__(
        self,
        model: ir.Model,
        plan: QuantPlan,
        groups: Sequence[QuantGroup],
        samples: Sequence[Sample],
        kinds: Mapping[str, OutputKind],
        budget: Budget,
        where: str = "the search samples",
        variants: Mapping[str, Mapping[str, QuantSpec]] | None = None,
        executor: Executor | None = None,
        means: Mapping[str, np.ndarray] | None = None,
        float_run: Evaluator | None = None,
    ):
        """`float_run`: an evaluator of the same model, groups and samples whose float outputs and
        probes this one takes over instead of running the float model again, and whose record of
        trials it continues."""
        shifts = bias_shifts(model, plan, means) if means else None  # corrected where `plan` rounds a weight
        switchable, self.switches = switchable_model(model, plan, variants, shifts)
        self.executor = executor
        self.choice: Mapping[str, str] = {}  # tensor → variant used when it is quantized (default BASE)
        # every configuration scored, in order: {"int8_share", "value", "float_groups", "choices"} (shared by
        # the evaluators `choosing` makes, so one search keeps one record)
        self.trials: list[dict] = []
        self.where = where
        self.plan, self.groups, self.kinds, self.budget = plan, list(groups), kinds, budget
        self.total_macs = sum(g.macs for g in self.groups)
        self.samples = [{k: v for k, v in s.items() if k != LABELS_KEY} for s in samples]
        self.labels = stacked_labels(samples)
        self.outputs = [v.name or "" for v in model.graph.outputs]
        tensors = [g.output for g in self.groups] + [t for g in self.groups for t in g.tensors]
        constants = all_initializers(model.graph)
        self.probes = list(dict.fromkeys(self.seen(t) for t in tensors if t not in constants))
        self.source = SessionSource.of(switchable, extra_outputs=self.probes)
        self.session = make_session(self.source, threads=SEARCH_THREADS)
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.streams: Streams | None = None  # read off the float run: the samples of a recurrent model's streams
        self.reference: dict[str, list[np.ndarray]]
        if float_run is not None:  # the same floats, under this model's names for the probes
            names = dict(zip(float_run.probes, self.probes, strict=True))
            self.reference = {names.get(k, k): v for k, v in float_run.reference.items()}
            self.streams, self.trials = float_run.streams, float_run.trials
            return
        self.reference = self.run(on=set())  # float: the outputs on every sample, the probes on the first few
        self.streams = Streams.of(self.samples, self.reference, kinds, where)
        k = min(PROBE_SAMPLES, len(self.samples))
        streams = self.streams.first(k) if self.streams is not None else None
        probed = _run(
            self.session, self.samples[:k], self._flags(set()), self._names(self.probes), SAMPLE_THREADS, streams
        )
        self.reference.update({p: probed[p] for p in self.probes if p not in self.outputs})

    def seen(self, tensor: str) -> str:
        """The value readers of `tensor` see: its quantized version when its switch is on."""
        return self.switches[tensor][1] if tensor in self.switches else tensor

    def choosing(self, choice: Mapping[str, str]) -> Evaluator:
        """This evaluator (same session and reference), quantizing each tensor of `choice` with its variant."""
        other = copy.copy(self)
        other.choice = dict(choice)
        return other

    def judged_by(self, budget: Budget, samples: int) -> Evaluator:
        """This evaluator (same session) judging `budget` on its first `samples` samples only, with a
        record of trials of its own (its values are in another metric than the search's)."""
        other = copy.copy(self)
        other.budget, other.trials = budget, []
        other.samples = self.samples[:samples]
        other.labels = self.labels[:samples] if self.labels is not None else None
        other.reference = {name: runs[:samples] for name, runs in self.reference.items()}
        other.streams = self.streams.first(samples) if self.streams is not None else None
        other.where = f"the first {len(other.samples)} of {self.where}"
        return other

    def _flags(self, on: set[str]) -> dict[str, np.ndarray]:
        return {
            switch: np.array(tensor in on and self.choice.get(tensor, BASE) == variant)
            for tensor, (by_variant, _) in self.switches.items()
            for variant, switch in by_variant.items()
        }

    def _names(self, probes: Sequence[str]) -> list[str]:
        return self.outputs + [p for p in probes if p not in self.outputs]

    def run(self, on: set[str], probes: Sequence[str] = ()) -> dict[str, list[np.ndarray]]:
        """Model outputs (and the intermediate `probes`) on every sample, with the tensors in `on` quantized."""
        return _run(self.session, self.samples, self._flags(on), self._names(probes), SAMPLE_THREADS, self.streams)

    def run_many(self, configs: Sequence[tuple[set[str], Sequence[str]]]) -> Iterator[dict[str, list[np.ndarray]]]:
        """`run(on, probes)` for each configuration, in order; on the executor (batches of
        `BATCH` configurations, at most two batches per worker in flight) when there is one."""
        if self.executor is None:
            for on, probes in configs:
                yield self.run(on, probes)
            return
        if self._scratch is None:  # workers open the model from a file, not from every task
            self._scratch = tempfile.TemporaryDirectory(prefix="qcompile-search-")
            self.source = self.source.spill(self._scratch.name)
        tasks = [[(self._flags(on), self._names(probes)) for on, probes in configs[i : i + BATCH]]
                 for i in range(0, len(configs), BATCH)]  # fmt: skip
        pending: deque[Future] = deque()
        for batch in tasks:
            pending.append(self.executor.submit(run_batch, self.source, self.samples, batch, self.streams))
            if len(pending) >= MAX_IN_FLIGHT:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    def score(self, float_groups: set[str], margin: float = 0.0) -> BudgetResult:
        """The budget on the model's outputs with `float_groups` in float and every other group in int8
        (recorded in `trials`, with the share of weight MACs left in int8).  A metric that may move in
        steps keeps at least its sampling error in reserve (`sampling_error`) where it meets the budget."""
        got = self.run(quantized_tensors_when(self.groups, float_groups))
        result = self.judge(got, margin)
        if result.met and not self.budget.metric.graded and (error := self.sampling_error(got)) > margin:
            result = self.judge(got, error)
        floats = sum(g.macs for g in self.groups if g.name in float_groups)
        share = 1.0 - floats / self.total_macs if self.total_macs else 1.0
        self.trials.append(
            {"int8_share": share, "value": result.value, "float_groups": len(float_groups), "choices": len(self.choice)}
        )
        return result

    def sampling_error(self, got: Mapping[str, list[np.ndarray]]) -> float:
        """The jackknife standard error of the budget's quantity on outputs `got` of these samples
        (a recurrent model's: over its streams, `Streams.blocks`)."""
        ref = {n: self.reference[n] for n in self.outputs}
        blocks = self.streams.blocks() if self.streams is not None else None
        return jackknife_error(self.budget, ref, {n: got[n] for n in self.outputs}, self.kinds, self.labels, blocks)

    def judge(
        self, got: Mapping[str, list[np.ndarray]], margin: float = 0.0, budget: Budget | None = None
    ) -> BudgetResult:
        """The budget (this evaluator's, or `budget`) on outputs `got` of this evaluator's samples."""
        ref = {n: stacked(self.reference[n]) for n in self.outputs}
        got_stacked = {n: stacked(got[n]) for n in self.outputs}
        return (budget or self.budget).evaluate(ref, got_stacked, self.kinds, self.labels, margin, where=self.where)


def _run(
    session: Any,
    samples: Sequence[Sample],
    flags: Mapping[str, np.ndarray],
    names: Sequence[str],
    threads: int = 1,
    streams: Streams | None = None,
):
    """Every sample through `session`, `threads` samples at a time (each run on one intra-op thread,
    so the floats are those of a sequential run), in sample order; with `streams`, a stream's
    samples one after the other, each fed the outputs of the one before, streams side by side."""

    def one(sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_session(session, {**sample, **flags}, names)

    if streams is not None:
        results = streams.run(one, samples, threads)
    elif threads > 1 and len(samples) > 1:
        with ThreadPoolExecutor(min(threads, len(samples)), thread_name_prefix="qcompile-search") as pool:
            results = list(pool.map(one, samples))
    else:
        results = [one(s) for s in samples]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for result in results:
        for name, arr in result.items():
            out[name].append(np.asarray(arr))
    return out


def run_batch(
    source: SessionSource,
    samples: Sequence[Sample],
    batch: Sequence[tuple[Mapping[str, np.ndarray], Sequence[str]]],
    streams: Streams | None = None,
) -> list[dict[str, list[np.ndarray]]]:
    """On a worker: each (switch flags, output names) of `batch` on every sample (as `streams`, when
    given), on this process's cached session of `source`."""
    if source not in _SESSIONS:
        _SESSIONS.clear()  # one switchable model at a time per worker
        _SESSIONS[source] = make_session(source, threads=SEARCH_THREADS)
    return [_run(_SESSIONS[source], samples, flags, names, streams=streams) for flags, names in batch]
