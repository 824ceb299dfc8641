import numpy as np

from qcompile.passes.cleanup import SafeIdentityElimination, cleanup_passes
from qcompile.passes.infer_shapes import InferShapes
from tests.helpers import assert_equivalent_and_idempotent, check, ops, parse


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
    assert_equivalent_and_idempotent(cleanup_passes, model, {"x": rng.normal(size=(2, 3)).astype(np.float32)})
    # the float16 round trip is not a no-op and stays; z must stay a distinct output of the graph input
    assert ops(model) == {"Relu": 1, "Cast": 2, "Identity": 1}
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_dropout_in_training_mode_or_with_a_used_mask_is_kept():
    for text in (
        """<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x) => (float[2, 3] y, bool[2, 3] mask) { y, mask = Dropout(x) }""",
        """<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x, bool t) => (float[2, 3] y) { y = Dropout(x, , t) }""",
    ):
        model = parse(text)
        assert not cleanup_passes()(model).modified
        assert ops(model) == {"Dropout": 1}


def test_dropout_with_constant_false_training_mode_goes():
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
g (float[2, 3] x) => (float[2, 3] y) <bool f = {0}> {
    r = Relu(x)
    y = Dropout(r, , f)
}""")
    assert cleanup_passes()(model).modified and ops(model) == {"Relu": 1}


def test_identity_between_two_graph_outputs_keeps_both_names():
    # onnx-ir 1.1's IdentityEliminationPass renames 'a' to 'b' here, so output 'a' disappears
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2] x) => (float[2] a, float[2] b) { a = Relu(x)
 b = Identity(a) }""")
    assert not SafeIdentityElimination()(model).modified
    assert [v.name for v in model.graph.outputs] == ["a", "b"]
    check(model)


def test_exact_cast_round_trips_go_and_lossy_ones_stay(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 3] x, int32[2, 3] i) => (float[2, 3] y, float[2, 3] z, int32[2, 3] j) {
    w = Cast <to = 11> (x)
    y = Cast <to = 1> (w)
    h = Cast <to = 10> (x)
    z = Cast <to = 1> (h)
    l = Cast <to = 7> (i)
    j = Cast <to = 6> (l)
}""")
    InferShapes()(model)
    feeds = {"x": rng.normal(size=(2, 3)).astype(np.float32), "i": rng.integers(-9, 9, (2, 3)).astype(np.int32)}
    assert_equivalent_and_idempotent(cleanup_passes, model, feeds, rtol=0, atol=0)
    # float → double → float and int32 → int64 → int32 are exact; float → float16 → float is not
    assert ops(model) == {"Cast": 2, "Identity": 2}
    assert [v.name for v in model.graph.outputs] == ["y", "z", "j"]
