import numpy as np
import pytest

from qcompile.passes.fold_affine import fold_affine_pass
from qcompile.passes.infer_shapes import InferShapes
from tests.helpers import assert_equivalent_and_idempotent, ops, parse

CONV = """<ir_version: 8, opset_import: ["": 17]>
g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 5] y)
  <float[3, 2, 3, 3] w = {WEIGHTS}, float[3] b = {0.5, -1, 2}, float[1, 3, 1, 1] k = {2, -0.5, 4},
   float kk = {1.5}> {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
BODY
}"""


def _conv(body: str, rng, **extra):
    text = CONV.replace("WEIGHTS", ", ".join(f"{v:.3f}" for v in rng.normal(size=54))).replace("BODY", body)
    for key, value in extra.items():
        text = text.replace(key, value)
    return parse(text), {"x": rng.normal(size=(1, 2, 5, 5)).astype(np.float32)}


@pytest.mark.parametrize(
    "body",
    [
        "y = Add(c, k)",
        "y = Sub(c, k)",
        "y = Sub(k, c)",
        "y = Mul(k, c)",
        "y = Div(c, k)",
        "s = Sub(c, k)\n m = Mul(s, kk)\n y = Add(m, k)",
    ],
)
def test_per_channel_and_scalar_constants_fold_into_the_conv(rng, body):
    model, feeds = _conv(body, rng)
    assert_equivalent_and_idempotent(fold_affine_pass, model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Conv": 1}


def test_scale_before_a_conv_folds_exactly_with_zero_padding(rng):
    model, feeds = _conv("y = Identity(c)", rng)
    text = (
        CONV.replace("WEIGHTS", ", ".join(f"{v:.3f}" for v in rng.normal(size=54)))
        .replace(
            "    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)\nBODY",
            "    s = Mul(x, k2)\n    y = Conv <pads = [1, 1, 1, 1]> (s, w, b)",
        )
        .replace("float kk = {1.5}", "float[2, 1, 1] k2 = {3, -2}")
    )
    model = parse(text)
    InferShapes()(model)
    assert_equivalent_and_idempotent(fold_affine_pass, model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Conv": 1}


@pytest.mark.parametrize(
    "body, why",
    [
        ("y = Add(c, x2)", "not a constant"),
        ("y = Mul(c, full)", "not per channel"),
        ("d = Add(c, k)\n y = Add(d, c)", "the conv output has two readers"),
    ],
)
def test_what_cannot_be_proven_is_left_alone(rng, body, why):
    model, feeds = _conv(
        body,
        rng,
        **{
            "(float[1, 2, 5, 5] x)": "(float[1, 2, 5, 5] x, float[1, 3, 5, 5] x2)",
            "float kk = {1.5}": "float[1, 1, 5, 1] full = {1, 2, 3, 4, 5}",
        },
    )
    before = ops(model)
    assert not fold_affine_pass()(model).modified, why
    assert ops(model) == before


def test_a_conv_output_that_is_a_graph_output_is_not_folded(rng):
    model, _ = _conv(
        "y = Add(c, k)", rng, **{"=> (float[1, 3, 5, 5] y)": "=> (float[1, 3, 5, 5] y, float[1, 3, 5, 5] c)"}
    )
    assert not fold_affine_pass()(model).modified


def test_gemm_and_matmul(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 4] x) => (float[2, 3] y, float[2, 3] z)
  <float[3, 4] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, float[3] b = {1, 2, 3}, float[3] k = {2, 0.5, -1},
   float[4, 3] w2 = {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}> {
    g1 = Gemm <transB = 1, alpha = 0.5> (x, w, b)
    y = Sub(g1, k)
    m = MatMul(x, w2)
    z = Mul(m, k)
}""")
    feeds = {"x": rng.normal(size=(2, 4)).astype(np.float32)}
    assert_equivalent_and_idempotent(fold_affine_pass, model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Gemm": 1, "MatMul": 1}


def test_through_a_transpose_that_moves_the_channels(rng):
    model, feeds = _conv(
        "t = Transpose <perm = [0, 2, 3, 1]> (c)\n y = Mul(t, k3)",
        rng,
        **{"=> (float[1, 3, 5, 5] y)": "=> (float[1, 5, 5, 3] y)", "float kk = {1.5}": "float[3] k3 = {2, -1, 0.5}"},
    )
    assert_equivalent_and_idempotent(fold_affine_pass, model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == {"Conv": 1, "Transpose": 1}


def test_gemm_with_beta_is_left_alone(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 4] x) => (float[2, 3] y) <float[3, 4] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, float[3] k = {2, 1, 3}> {
    g1 = Gemm <transB = 1, beta = 0.5> (x, w)
    y = Add(g1, k)
}""")
    assert not fold_affine_pass()(model).modified


def test_a_scale_that_broadcasts_the_channels_or_is_not_finite_is_left_alone(rng):
    for scale, shape in (
        ("float[1, 2, 1, 1] k2 = {3, -2}", "[1, 1, 5, 5]"),
        ("float[2, 1, 1] k2 = {inf, 1}", "[1, 2, 5, 5]"),
    ):
        text = (
            CONV.replace("WEIGHTS", ", ".join("0.1" for _ in range(54)))
            .replace(
                "    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)\nBODY",
                "    s = Mul(x, k2)\n    y = Conv <pads = [1, 1, 1, 1]> (s, w, b)",
            )
            .replace("float kk = {1.5}", scale)
            .replace("float[1, 2, 5, 5] x", f"float{shape} x")
        )
        model = parse(text)
        InferShapes()(model)
        assert not fold_affine_pass()(model).modified, scale
    model, _ = _conv("y = Mul(c, kinf)", rng, **{"float kk = {1.5}": "float kinf = {inf}"})
    assert not fold_affine_pass()(model).modified
