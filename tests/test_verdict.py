"""A bad result reads as bad: warnings on stderr and in the card, kernel counts inside branches."""

import math

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.card import render_markdown
from qcompile.errors import QCompileWarning
from qcompile.plan import NodeDecision, QuantPlan, QuantSpec
from qcompile.runtime import fused_op_counts
from qcompile.verdict import SLOWER, problems
from tests.helpers import parse


def _samples(rng, n=8):
    return [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(n)]


def test_a_collapsed_output_is_named_with_what_to_do(rng):
    model = parse("""<ir_version: 10, opset_import: ["": 21]>
g (float[1, 4] x) => (float[1, 4] y) <float[4, 4] w = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}> {
    m = MatMul(x, w)
    y = Relu(m)
}""")
    coarse = QuantPlan(tensors={"x": QuantSpec("uint8", scale=(1.0,), zero_point=(128,))})  # steps of 1 on ±3
    expected = r"output 'y' collapsed: SQNR .* dB \(below 10\); let a search choose calibrators .* --policy selective"
    with pytest.warns(QCompileWarning, match=expected):
        result = qcompile.compile(model, calibration=_samples(rng), plan=coarse, measure_latency=False)
    assert any("collapsed" in v["problem"] and v["fails"] for v in result.card["verdict"])
    assert "- **output 'y' collapsed" in render_markdown(result.card)


def test_a_model_with_nothing_to_quantize_says_so(rng):
    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["": 21]>
g (float[1, 4] x) => (float[1, 4] y) { e = Exp(x)
 y = Neg(e) }""")
    with pytest.warns(QCompileWarning, match="nothing runs in integer: 0 integer and 0 float compute kernels"):
        result = qcompile.compile(proto, calibration=_samples(rng), measure_latency=False)
    assert result.card["verdict"][0]["advice"].startswith("see which ops the target quantizes")


def test_kernels_inside_branches_and_recurrent_ops_are_counted():
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["": 21]>
g (float[1, 3, 8, 8] x, bool c, float[1, 1, 4] s, float[1, 16, 4] wl, float[1, 16, 4] rl) => (float[1, 3, 8, 8] y,
  float[1, 1, 1, 4] h) <float[3, 3, 1, 1] w = {1, 0, 0, 0, 1, 0, 0, 0, 1}> {
    y = If(c) <then_branch = g1 () => (float[1, 3, 8, 8] a) { a = Conv(x, w) },
               else_branch = g2 () => (float[1, 3, 8, 8] b) { b = Conv(x, w) }>
    h, hn, cn = LSTM <hidden_size = 4> (s, wl, rl)
}""")
    assert fused_op_counts(model.graph.node) == {"integer": 0, "float": 3}


def _card(**parts):
    output = {"name": "y", "sqnr_db": 40.0, "cosine": 1.0, "top1_agreement": None}
    card = {"fidelity": {"outputs": [output]}, "ort_kernels": {"integer": 2, "float": 0}}
    return {**card, **parts}


def test_nan_outputs_a_slower_model_and_a_missed_search_are_problems():
    plan = QuantPlan(nodes={"fc": NodeDecision("int8")})
    assert problems(_card(), plan) == []
    nan = _card(fidelity={"outputs": [{"name": "y", "sqnr_db": math.nan, "cosine": math.nan, "top1_agreement": None}]})
    assert problems(nan, plan)[0][0] == "output 'y' collapsed: SQNR nan dB (below 10)"
    latency = {"float": {"1": 1.0}, "quantized": {"1": 1.5}}
    assert (
        problems(_card(latency_ms=latency), plan)[0][0]
        == "the int8 model is slower than float at 1 thread (1.50× its latency)"
    )
    noise = {"float": {"1": 1.0}, "quantized": {"1": 0.99 * SLOWER}}
    assert problems(_card(latency_ms=noise), plan) == []
    search = {"met": False, "metric": "accuracy", "bound": {"max_drop": 0.01}, "margin": 0.005, "chosen": 0.9}
    ((problem, advice, fails),) = problems(_card(search=search), plan)
    assert problem == (
        "the precision search did not reach accuracy within 0.01 of float with its margin 0.005 "
        "on its samples (best 0.9)"
    )
    assert advice == "set a lower budget, or expect it to be missed" and not fails


def test_qlinear_kernels_count_as_integer():
    nodes = [onnx.helper.make_node(op, [], []) for op in ("QLinearAdd", "QLinearSigmoid", "MatMul", "Relu")]
    assert fused_op_counts(nodes) == {"integer": 2, "float": 1}


def test_a_missed_budget_suggests_selective_unless_selective_already_searched():
    plan = QuantPlan(nodes={"fc": NodeDecision("int8")})
    budget = {"met": False, "metric": "sqnr", "floor": 30.0, "value": 20.0, "float_value": None}
    for policy, advice in (("naive", "try --policy selective"), ("hybrid", "try --policy selective")):
        ((_, said, fails),) = problems(_card(policy=policy, budget=budget), plan)
        assert said.endswith(advice) and fails
    ((_, said, fails),) = problems(_card(policy="selective", budget=budget), plan)
    assert said == (
        "the selective search could not do better: give more calibration data, a larger --margin, or a lower budget"
    )
    assert fails


def test_a_collapse_is_a_warning_when_the_users_budget_is_met():
    plan = QuantPlan(nodes={"fc": NodeDecision("int8")})
    low = {"outputs": [{"name": "y", "sqnr_db": 8.6, "cosine": 0.95, "top1_agreement": None}]}
    budget = {"metric": "line_accuracy", "max_drop": 0.02, "value": 0.96, "float_value": 0.96, "met": True}
    ((problem, advice, fails),) = problems(_card(fidelity=low, budget=budget), plan)
    assert problem == "output 'y' collapsed: SQNR 8.6 dB (below 10)" and not fails
    assert advice.startswith("the budget you set is met, and its metric decides; the outputs themselves differ")
    missed = problems(_card(fidelity=low, budget={**budget, "value": 0.9, "met": False}), plan)
    assert [p.fails for p in missed] == [True, True]  # the collapse and the budget
