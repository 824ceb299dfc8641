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


def test_nodes_of_a_branch_calibration_never_took_stay_float(rng):
    from qcompile.passes.calibrate import calibrate
    from tests.support.quant_models import if_feeds, if_model

    model = if_model(rng)
    seen = calibrate(model, if_feeds(rng, 4, mode=1)).dtypes
    decisions = select_precision(model, get_target("ort-cpu"), observed=seen)
    assert {n: decisions[n].precision for n in ("then_conv0", "then_relu0", "then_conv1")} == dict.fromkeys(
        ("then_conv0", "then_relu0", "then_conv1"), "int8"
    )
    assert decisions["else_conv0"].precision == "float"
    assert decisions["else_conv0"].reason == "inside an If branch that no calibration sample took"
    assert decisions["branch"].reason == "ort-cpu has no int8 If"


def test_nodes_of_a_loop_body_no_sample_ran_stay_float_and_say_why():
    from onnx_ir.passes.common import NameFixPass

    from tests.core.test_expose import LOOP
    from tests.helpers import parse

    model = parse(LOOP)
    NameFixPass()(model)
    decisions = select_precision(model, get_target("ort-cpu"), observed={"x", "out", "scan"})
    body_add = next(n.name for n in model.graph.all_nodes() if n.op_type == "Add")
    assert decisions[body_add].precision == "float"
    assert decisions[body_add].reason == "inside a Loop body that no calibration sample ran"
