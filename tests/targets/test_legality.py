import onnx_ir as ir
import pytest

from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import LegalityError, get_target
from qcompile.targets.legality import check_legality
from tests.helpers import parse


def _model(text_body: str, opset: int = 21) -> ir.Model:
    return parse(f'<ir_version: 10, opset_import: ["": {opset}]> g (float[4] x) => (float[4] y) ' + text_body)


def test_legal_model_passes():
    check_legality(_model("{ y = Relu(x) }"), QuantPlan(), get_target("ort-cpu"))


def test_opset_out_of_range():
    with pytest.raises(
        LegalityError,
        match=r"ort-cpu: rule opset-range fails at node '<model>': opset 11 is outside ort-cpu's range \[13, 21\]",
    ):
        check_legality(_model("{ y = Relu(x) }", 11), QuantPlan(), get_target("ort-cpu"))


def test_qdq_dtype_not_allowed():
    model = _model(
        "<float s = {0.1}, int16 z = {0}> "
        "{ q = QuantizeLinear <saturate = 1> (x, s, z)\n y = DequantizeLinear(q, s, z) }"
    )
    for i, n in enumerate(model.graph):
        n.name = f"n{i}"
    with pytest.raises(
        LegalityError,
        match="rule qdq-dtype fails at node 'n0': QuantizeLinear uses int16; ort-cpu allows int8, uint8, int32",
    ):
        check_legality(model, QuantPlan(), get_target("ort-cpu"))


def test_int8_decision_on_an_unsupported_op():
    model = _model("{ y = Exp(x) }")
    model.graph.node(0).name = "exp"
    with pytest.raises(
        LegalityError,
        match="rule int8-op-supported fails at node 'exp': Exp is planned as int8 but ort-cpu has no integer Exp",
    ):
        check_legality(model, QuantPlan(nodes={"exp": NodeDecision("int8")}), get_target("ort-cpu"))


def test_unfolded_weight_quantization():
    model = _model(
        "<float w = {1, 2, 3, 4}, float s = {0.1}, int8 z = {0}> "
        "{ q = QuantizeLinear(w, s, z)\n d = DequantizeLinear(q, s, z)\n y = Add(x, d) }"
    )
    model.graph.node(0).name = "qw"
    with pytest.raises(
        LegalityError, match="rule weights-prequantized fails at node 'qw': QuantizeLinear on constant 'w'"
    ):
        check_legality(model, QuantPlan(), get_target("ort-cpu"))
