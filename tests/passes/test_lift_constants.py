import numpy as np

from qcompile.passes.lift_constants import LiftConstants
from tests.conftest import ops, parse
from tests.passes.equivalence import assert_equivalent_and_idempotent


def test_constant_weights_become_initializers(rng):
    w = ", ".join(str(v) for v in rng.normal(size=12).round(3))
    model = parse(f"""<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x) => (float[2, 4] y) {{
    w = Constant <value = float[3, 4] {{{w}}}> ()
    b = Constant <value = float[1] {{0.5}}> ()
    m = MatMul(x, w)
    y = Add(m, b)
}}""")
    assert_equivalent_and_idempotent(LiftConstants, model, {"x": rng.normal(size=(2, 3)).astype(np.float32)})
    assert ops(model)["Constant"] == 0 and len(model.graph.initializers) == 2
