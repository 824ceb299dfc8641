import numpy as np

from qcompile.passes.cleanup import RemoveNoOps
from qcompile.passes.infer_shapes import InferShapes
from tests.conftest import ops, parse
from tests.passes.equivalence import assert_equivalent_and_idempotent


def test_identity_dropout_and_noop_cast_are_removed(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
    a = Identity(x)
    b = Relu(a)
    c = Dropout(b)
    d = Cast <to = 1> (c)
    e = Cast <to = 10> (d)
    f = Cast <to = 1> (e)
    y = Identity(f)
    z = Identity(x)
}""")
    InferShapes()(model)
    assert_equivalent_and_idempotent(RemoveNoOps, model, {"x": rng.normal(size=(2, 3)).astype(np.float32)})
    # the float16 round trip is not a no-op and stays; z must stay a distinct output of the graph input
    assert ops(model) == {"Relu": 1, "Cast": 2, "Identity": 1}
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_training_dropout_is_kept():
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x) => (float[2, 3] y, bool[2, 3] mask) { y, mask = Dropout(x) }""")
    assert not RemoveNoOps()(model).modified
