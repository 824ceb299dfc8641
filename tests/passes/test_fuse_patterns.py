import numpy as np
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qcompile.passes.fuse_patterns import FUSED_OPS, FusePatterns
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.upgrade_opset import UpgradeOpset
from tests.helpers import assert_equivalent_and_idempotent, ops, parse
from tests.support.residue import decomposed_layernorm, paddle_hardswish

ALL = [f.op_type for f in FUSED_OPS]


def _prepared(proto) -> ir.Model:
    model = ir.from_proto(proto)
    UpgradeOpset()(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    InferShapes()(model)
    return model


def test_paddle_hardswish_becomes_one_op(rng):
    model = _prepared(paddle_hardswish())
    feeds = {"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32) * 4}
    assert_equivalent_and_idempotent(lambda: FusePatterns(ALL), model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Conv": 2, "HardSwish": 1}


def test_decomposed_layernorm_becomes_one_op(rng):
    model = _prepared(decomposed_layernorm())
    feeds = {"x": rng.normal(size=(1, 6, 16)).astype(np.float32)}
    assert_equivalent_and_idempotent(lambda: FusePatterns(ALL), model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"MatMul": 2, "LayerNormalization": 1}


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_gelu_forms_become_the_standard_op(rng, form):
    body = {
        "erf": "d = Div(x, sqrt2)\n e = Erf(d)\n p = Add(e, one)\n m = Mul(x, p)\n y = Mul(m, half)",
        "tanh": "c = Pow(x, three)\n k = Mul(coef, c)\n s = Add(x, k)\n u = Mul(scale, s)\n t = Tanh(u)\n"
        " p = Add(t, one)\n h = Mul(half, p)\n y = Mul(x, h)",
    }[form]
    model = parse(f"""<ir_version: 10, opset_import: ["": 21]>
g (float[2, 8] x) => (float[2, 8] y) <float sqrt2 = {{1.4142135}}, float one = {{1}}, float half = {{0.5}},
  float three = {{3}}, float coef = {{0.044715}}, float scale = {{0.7978846}}> {{
 {body}
}}""")
    feeds = {"x": rng.normal(size=(2, 8)).astype(np.float32) * 3}
    assert_equivalent_and_idempotent(lambda: FusePatterns(ALL), model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Gelu": 1}


def test_only_ops_the_target_lists_and_the_opset_allows():
    assert not FusePatterns(["LayerNormalization"])(_prepared(paddle_hardswish())).modified
    model = ir.from_proto(paddle_hardswish())  # opset 13: no HardSwish op yet
    assert not FusePatterns(["HardSwish"])(model).modified and ops(model)["Clip"] == 1


def test_every_fused_op_has_rules():
    assert all(f.rules() for f in FUSED_OPS)  # an upstream rename would otherwise disable one silently


def test_hardsigmoid_alone_and_swish_at_opset_24(rng):
    model = parse("""<ir_version: 10, opset_import: ["": 24]>
g (float[2, 8] x) => (float[2, 8] y, float[2, 8] z) <float three = {3}, float zero = {0}, float six = {6}> {
    a = Add(x, three)
    c = Clip(a, zero, six)
    y = Div(c, six)
    s = Sigmoid(x)
    z = Mul(x, s)
}""")
    feeds = {"x": rng.normal(size=(2, 8)).astype(np.float32) * 4}
    assert_equivalent_and_idempotent(lambda: FusePatterns(["HardSigmoid", "Swish"]), model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"HardSigmoid": 1, "Swish": 1}
