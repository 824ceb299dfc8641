import pytest

from qcompile.errors import QCompileError
from qcompile.passes.select_precision import SelectPrecision
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import get_target
from tests.passes.quant_fixtures import conv_model


def test_naive_quantizes_every_op_the_target_runs(rng):
    model = conv_model(rng)
    plan = QuantPlan()
    result = SelectPrecision(plan, get_target("ort-cpu"))(model)
    assert not result.modified
    assert {n: d.precision for n, d in plan.nodes.items()} == {
        "conv": "int8", "relu": "int8", "pool": "int8", "flatten": "int8", "fc": "int8", "sigmoid": "int8"}


def test_user_pins_win_and_unknown_nodes_are_named(rng):
    model = conv_model(rng)
    plan = QuantPlan()
    pinned = QuantPlan(nodes={"fc": NodeDecision("float")})
    SelectPrecision(plan, get_target("ort-cpu"), pinned=pinned)(model)
    assert plan.nodes["fc"].precision == "float" and plan.nodes["fc"].reason == "pinned by the user plan"
    with pytest.raises(QCompileError, match=r"plan pins node\(s\) \['nope'\] that the model does not have"):
        SelectPrecision(QuantPlan(), get_target("ort-cpu"), pinned=QuantPlan(nodes={"nope": NodeDecision("float")}))(model)


def test_unknown_policy():
    with pytest.raises(QCompileError, match="unknown policy 'clever'; known: naive"):
        SelectPrecision(QuantPlan(), get_target("ort-cpu"), "clever")
