import numpy as np
import pytest
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qcompile.passes.expand_ops import EXPANSIONS, ExpandOps
from qcompile.prepare import expandable_ops
from qcompile.targets import get_target
from tests.helpers import assert_equivalent_and_idempotent, ops, parse

ALL = [e.op_type for e in EXPANSIONS]

CASES = {
    "HardSigmoid": ("y = HardSigmoid <alpha = 0.2, beta = 0.5> (x)", {"Add": 1, "Clip": 1, "Mul": 1}),
    "HardSwish": ("y = HardSwish (x)", {"Add": 1, "Clip": 1, "Mul": 2}),
    "Pow": ("y = Pow (x, two)", {"Mul": 1}),
    "Div": ("y = Div (x, z)", {"Reciprocal": 1, "Mul": 1}),
    "Div by a constant": ("y = Div (x, two)", {"Mul": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_expansion_keeps_the_numbers(case, rng):
    body, expected = CASES[case]
    model = parse(
        f"""<ir_version: 10, opset_import: ["" : 21]>
        g (float[2, 3, 4] x, float[2, 3, 4] z) => (float[2, 3, 4] y) <float two = {{2.0}}> {{ {body} }}"""
    )
    feeds = {
        "x": rng.normal(size=(2, 3, 4)).astype(np.float32) * 4,
        "z": rng.uniform(0.5, 2, (2, 3, 4)).astype(np.float32),
    }
    assert_equivalent_and_idempotent(lambda: ExpandOps(ALL), model, feeds, rtol=1e-5, atol=1e-5)
    assert ops(model) == expected


def test_pow_other_than_square_stays():
    model = parse(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float[4] x) => (float[4] y, float[4] w) {
            three = Constant <value = float {3.0}> ()
            y = Pow (x, three)
            w = Identity (x)
        }"""
    )
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    assert not ExpandOps(ALL)(model).modified


def test_only_ops_the_target_lacks_are_expanded():
    assert expandable_ops(get_target("ort-cpu")) == []  # ORT runs HardSigmoid, HardSwish, Pow, Div
    assert set(expandable_ops(get_target("tflite"))) == {"HardSigmoid", "HardSwish", "Pow", "Div"}
    assert set(expandable_ops(get_target("tflm"))) == {"HardSigmoid", "Pow", "Div"}  # TFLM keeps HARD_SWISH
