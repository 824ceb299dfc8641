import pytest

from qcompile.errors import QCompileError
from qcompile.passes.select_precision import select_precision
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import get_target
from tests.helpers import graph_signature
from tests.support.quant_models import conv_model


def test_naive_quantizes_every_op_the_target_runs(rng):
    model = conv_model(rng)
    before = graph_signature(model)
    decisions = select_precision(model, get_target("ort-cpu"))
    assert graph_signature(model) == before
    assert {n: d.precision for n, d in decisions.items()} == {
        "conv": "int8",
        "relu": "int8",
        "pool": "int8",
        "flatten": "int8",
        "fc": "int8",
        "sigmoid": "int8",
    }


def test_user_pins_win_and_unknown_nodes_are_named(rng):
    model = conv_model(rng)
    pinned = QuantPlan(nodes={"fc": NodeDecision("float")})
    decisions = select_precision(model, get_target("ort-cpu"), pinned=pinned)
    assert decisions["fc"].precision == "float" and decisions["fc"].reason == "pinned by the user plan"
    with pytest.raises(QCompileError, match=r"plan pins node\(s\) \['nope'\] that the model does not have"):
        select_precision(model, get_target("ort-cpu"), pinned=QuantPlan(nodes={"nope": NodeDecision("float")}))


def test_unknown_policy(rng):
    with pytest.raises(QCompileError, match="unknown policy 'clever'; known: naive"):
        select_precision(conv_model(rng), get_target("ort-cpu"), "clever")
