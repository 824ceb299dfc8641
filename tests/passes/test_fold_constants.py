import numpy as np

from qcompile.passes.fold_constants import FoldConstants
from qcompile.passes.lift_constants import LiftConstants
from tests.conftest import ops, parse
from tests.passes.equivalence import assert_equivalent_and_idempotent


def test_shape_arithmetic_and_constant_math_fold(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 3, 4] x) => (float[2, 12] y) {
    s = Shape(x)
    i = Constant <value = int64[1] {0}> ()
    n = Gather <axis = 0> (s, i)
    minus1 = Constant <value = int64[1] {-1}> ()
    shape = Concat <axis = 0> (n, minus1)
    a = Constant <value = float[1] {2.0}> ()
    b = Constant <value = float[1] {3.0}> ()
    c = Mul(a, b)
    r = Reshape(x, shape)
    y = Mul(r, c)
}""")
    LiftConstants()(model)
    assert_equivalent_and_idempotent(FoldConstants, model, {"x": rng.normal(size=(2, 3, 4)).astype(np.float32)})
    assert ops(model) == {"Reshape": 1, "Mul": 1}
