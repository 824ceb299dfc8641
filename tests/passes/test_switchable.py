"""The switchable fake-quant model and its evaluator: float with every switch off, the plan's
fake-quant model with them on, each calibrator's spec behind its own switch, the same runs on an
executor as in process."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompile.budget import Budget, parse_metric
from qcompile.metrics import OutputKind
from qcompile.passes import switchable
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.passes.quant_groups import quant_groups
from qcompile.passes.switchable import BASE, PROBE_SAMPLES, Evaluator, switchable_model
from qcompile.plan import QuantPlan
from qcompile.runtime import make_session, run_session
from qcompile.targets import get_target
from tests.helpers import copy
from tests.support.quant_models import conv_model, feeds, planned


def test_switches_off_is_float_and_on_is_the_fake_quant_model(rng):
    model = conv_model(rng)
    samples = feeds(rng)
    plan, _ = planned(model, samples)
    switchable, switches = switchable_model(model, plan)
    off = {s[BASE]: np.array(False) for s, _ in switches.values()}
    on = {s[BASE]: np.array(True) for s, _ in switches.values()}
    fake = copy(model)
    InsertQDQ(plan)(fake)
    for sample in samples[:3]:
        # Q/DQ simulated in float on both sides (optimized, ORT would run the fake model's integer kernels)
        want_float, want_quant = (
            run_session(make_session(model), sample),
            run_session(make_session(fake, optimize=False), sample),
        )
        got_off = run_session(make_session(switchable), {**sample, **off})
        got_on = run_session(make_session(switchable, optimize=False), {**sample, **on})
        for name in ("y", "s"):
            np.testing.assert_allclose(got_off[name], want_float[name], rtol=1e-6, atol=1e-6)
            # float noise can tip a value across a rounding boundary: at most one step apart
            np.testing.assert_allclose(got_on[name], want_quant[name], atol=1.01 * plan.tensors[name].scale[0])


def _coarser(plan: QuantPlan, factor: float) -> dict:
    """Every activation spec of `plan` with `factor` times its scale: a second variant per tensor."""
    return {
        name: {"coarse": spec.with_params(spec.scale_array() * factor, spec.zero_point_array())}
        for name, spec in plan.tensors.items()
        if not spec.per_channel and spec.dtype != "int32"
    }


def test_each_variant_switch_gives_the_fake_quant_model_with_its_spec(rng):
    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    variants = _coarser(plan, 4.0)
    coarse_plan = replace(plan, tensors={**plan.tensors, **{n: v["coarse"] for n, v in variants.items()}})
    switchable, switches = switchable_model(model, plan, variants)
    fake = copy(model)
    InsertQDQ(coarse_plan)(fake)
    flags = {}
    for name, (by_variant, _) in switches.items():
        for variant, switch in by_variant.items():
            flags[switch] = np.array(variant == ("coarse" if name in variants else BASE))
    for sample in samples[:3]:
        want = run_session(make_session(fake, optimize=False), sample)
        got = run_session(make_session(switchable, optimize=False), {**sample, **flags})
        np.testing.assert_allclose(got["y"], want["y"], atol=1.01 * coarse_plan.tensors["y"].scale[0])


def test_runs_on_an_executor_equal_runs_in_process(rng):
    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    budget, kinds = Budget(parse_metric("sqnr"), floor=30), {"y": OutputKind(), "s": OutputKind()}
    evaluator = Evaluator(model, plan, groups, samples, kinds, budget)
    configs = [(set(), []), ({"x"}, evaluator.probes[:2]), (set(plan.tensors), [])] * 3  # 9 runs: several batches
    local = list(evaluator.run_many(configs))
    with ThreadPoolExecutor(2) as pool:
        remote = list(Evaluator(model, plan, groups, samples, kinds, budget, executor=pool).run_many(configs))
    assert len(remote) == len(local) == len(configs)
    for a, b in zip(local, remote, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            for x, y in zip(a[name], b[name], strict=True):
                np.testing.assert_array_equal(x, y)


def test_samples_side_by_side_give_the_sequential_floats_in_order(rng, monkeypatch):
    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    budget, kinds = Budget(parse_metric("sqnr"), floor=30), {"y": OutputKind(), "s": OutputKind()}
    runs = {}
    for threads in (1, 3):
        monkeypatch.setattr(switchable, "SAMPLE_THREADS", threads)
        evaluator = Evaluator(model, plan, groups, samples, kinds, budget)
        runs[threads] = evaluator.run(set(plan.tensors), evaluator.probes)
    for name, sequential in runs[1].items():
        assert len(sequential) == len(samples)
        for x, y in zip(sequential, runs[3][name], strict=True):
            np.testing.assert_array_equal(x, y)


def _conv_search(rng, n: int):
    """The conv model, `n` samples, its naive plan, its groups and output kinds."""
    model, samples = conv_model(rng), feeds(rng, n)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    return model, samples, plan, groups, {"y": OutputKind(), "s": OutputKind()}


def test_judged_by_scores_as_an_evaluator_of_the_first_samples_with_that_budget(rng):
    model, samples, plan, groups, kinds = _conv_search(rng, 6)
    evaluator = Evaluator(model, plan, groups, samples, kinds, Budget(parse_metric("top1"), floor=0.5))
    sqnr = Budget(parse_metric("sqnr"), floor=30)
    view = evaluator.judged_by(sqnr, 3)
    fresh = Evaluator(model, plan, groups, samples[:3], kinds, sqnr)
    for floats in (set(), {groups[0].name}):
        assert view.score(floats).value == fresh.score(floats).value
    assert len(view.samples) == 3 and len(view.trials) == 2 and evaluator.trials == []  # a record of its own


def test_a_stepwise_metric_meets_the_budget_only_with_its_sampling_error_in_reserve(rng):
    from qcompile.budget import jackknife_error

    model, samples, plan, groups, kinds = _conv_search(rng, 16)
    reference = Evaluator(model, plan, groups, samples, kinds, Budget(parse_metric("sqnr"), floor=0))
    got = reference.run(set(plan.tensors))
    errors = [float(np.sum((r - g) ** 2)) for r, g in zip(reference.reference["y"], got["y"], strict=True)]
    cut = float(np.median(errors))

    def share_close(ref, out):  # the share of samples whose error is below the median: about one half
        return float(np.mean(np.sum((ref["y"] - out["y"]) ** 2, axis=tuple(range(1, ref["y"].ndim))) <= cut))

    value = share_close({"y": np.concatenate(reference.reference["y"])}, {"y": np.concatenate(got["y"])})
    budget = Budget(parse_metric(share_close), floor=value - 0.05)
    evaluator = Evaluator(model, plan, groups, samples, kinds, budget)
    error = jackknife_error(budget, {n: evaluator.reference[n] for n in evaluator.outputs}, got, kinds, None)
    assert 0.05 < error < 0.2  # about √(½·½/15)
    result = evaluator.score(set(), margin=0.01)
    assert result.value == value and not result.met  # met with 0.01 to spare, not with its sampling error
    graded = Evaluator(model, plan, groups, samples, kinds, Budget(parse_metric("sqnr"), floor=0))
    assert graded.score(set(), margin=0.01).met  # a graded metric keeps the margin it is given


def test_the_float_activations_are_kept_for_the_first_samples_only(rng):
    model, samples = conv_model(rng), feeds(rng, 12)
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    evaluator = Evaluator(
        model, plan, groups, samples, {"y": OutputKind(), "s": OutputKind()}, Budget(parse_metric("sqnr"), floor=0)
    )
    inner = [p for p in evaluator.probes if p not in evaluator.outputs]
    assert inner and all(len(evaluator.reference[p]) == PROBE_SAMPLES for p in inner)
    assert all(len(evaluator.reference[o]) == len(samples) for o in evaluator.outputs)
    fresh = evaluator.run(set(), probes=inner)  # the same floats as a run of every sample
    for p in inner:
        for kept, again in zip(evaluator.reference[p], fresh[p], strict=False):
            np.testing.assert_array_equal(kept, again)


def _ops_run(model, feed: dict, folder) -> list[str]:
    """The op types ORT's profiler saw run (subgraph nodes included) on `feed`."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(folder / "switchable")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    return [e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})]


def test_a_switch_that_is_off_runs_no_quantization(rng, tmp_path):
    """Trials with most tensors float (a ranking's "this group alone int8") cost a float run, not
    every tensor's Q/DQ (as a Where, which computes both of its inputs, did)."""
    model = conv_model(rng)
    sample = feeds(rng)[0]
    plan, _ = planned(model, feeds(rng))
    switchable, switches = switchable_model(model, plan)
    names = sorted(switches)
    flags = {switches[t][0][BASE]: np.array(False) for t in names}
    off = _ops_run(switchable, {**sample, **flags}, tmp_path)
    assert "Conv" in off and "QuantizeLinear" not in off and "DequantizeLinear" not in off
    one = {**flags, switches[names[0]][0][BASE]: np.array(True)}
    assert _ops_run(switchable, {**sample, **one}, tmp_path).count("QuantizeLinear") == 1


def test_an_evaluator_of_one_variant_a_tensor_runs_as_the_choosing_one_and_takes_over_its_float_run(rng):
    """Selective's float search runs on an evaluator of the chosen specs only (one switch a
    tensor): it gives the floats of the evaluator of every variant with that choice, and its
    float outputs and probes are those a fresh evaluator computes, under its own probe names."""
    model, samples = conv_model(rng), feeds(rng)
    plan, _ = planned(model, samples)
    variants = _coarser(plan, 4.0)
    coarse_plan = replace(plan, tensors={**plan.tensors, **{n: v["coarse"] for n, v in variants.items()}})
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    budget, kinds = Budget(parse_metric("sqnr"), floor=30), {"y": OutputKind(), "s": OutputKind()}
    every = Evaluator(model, plan, groups, samples, kinds, budget, variants=variants)
    one = Evaluator(model, coarse_plan, groups, samples, kinds, budget, float_run=every)
    fresh = Evaluator(model, coarse_plan, groups, samples, kinds, budget)
    assert one.reference.keys() == fresh.reference.keys() and one.probes == fresh.probes
    assert one.trials is every.trials  # one search, one record of trials
    for name, runs in fresh.reference.items():
        for x, y in zip(one.reference[name], runs, strict=True):
            np.testing.assert_array_equal(x, y)
    choosing = every.choosing({n: "coarse" for n in variants})
    for on in (set(), {"x"}, set(plan.tensors)):
        a, b = one.run(on, one.probes[:2]), choosing.run(on, choosing.probes[:2])
        for x, y in zip(a["y"] + a[one.probes[1]], b["y"] + b[choosing.probes[1]], strict=True):
            np.testing.assert_array_equal(x, y)
