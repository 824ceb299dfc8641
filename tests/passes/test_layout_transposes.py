import numpy as np
import onnx_ir as ir
import pytest

from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.layout_transposes import PushTransposes
from tests.helpers import assert_equivalent_and_idempotent, copy, ops, parse
from tests.support.residue import tf2onnx_blocks


def _model(proto):
    model = ir.from_proto(proto)
    InferShapes()(model)
    return model


@pytest.mark.parametrize("batch", [1, "N"])
def test_residual_nhwc_blocks_keep_transposes_only_at_the_edges(rng, batch):
    model = _model(tf2onnx_blocks(3, batch=batch))
    feeds = {"input": rng.normal(size=(1, 8, 8, 8)).astype(np.float32)}
    assert_equivalent_and_idempotent(PushTransposes, model, feeds, rtol=0, atol=0)
    assert ops(model)["Transpose"] == 2
    first, last = model.graph.node(0), model.graph.node(len(model.graph) - 2)
    assert first.op_type == "Transpose" and first.inputs[0].name == "input"
    assert last.op_type == "Transpose" and [o.name for o in model.graph.outputs] == ["output"]
    assert model.graph.outputs[0].shape[0] == batch  # symbolic batch kept


def test_constants_reductions_softmax_and_concat_follow_the_layout(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 18]>
g (float[1, 4, 5, 3] x, float[1, 4, 5, 1] z) => (float[1, 2, 4, 5] y)
  <float[3, 1, 1] c = {1, 2, 3}, int64[1] ax = {1}> {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    a = Add(t, c)
    r = ReduceMean <keepdims = 1> (a, ax)
    s = Softmax <axis = 2> (r)
    tz = Transpose <perm = [0, 3, 1, 2]> (z)
    j = Concat <axis = 1> (s, tz)
    y = Relu(j)
}""")
    InferShapes()(model)
    feeds = {
        "x": rng.normal(size=(1, 4, 5, 3)).astype(np.float32),
        "z": rng.normal(size=(1, 4, 5, 1)).astype(np.float32),
    }
    assert_equivalent_and_idempotent(PushTransposes, model, feeds, rtol=1e-6, atol=1e-6)
    assert ops(model)["Transpose"] == 1  # one, moved down next to the graph output


def test_nothing_moves_without_a_gain(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 5, 3] x, float[1, 3, 4, 5] w) => (float[1, 3, 4, 5] y) {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    y = Add(t, w)
}""")
    assert not PushTransposes()(model).modified
    assert ops(model) == {"Transpose": 1, "Add": 1}


def test_inverse_pairs_cancel_and_graph_outputs_keep_their_names(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 5, 3] x) => (float[1, 4, 5, 3] y, float[1, 3, 4, 5] t) {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    r = Relu(t)
    y = Transpose <perm = [0, 2, 3, 1]> (r)
}""")
    feeds = {"x": rng.normal(size=(1, 4, 5, 3)).astype(np.float32)}
    assert_equivalent_and_idempotent(PushTransposes, model, feeds, rtol=0, atol=0)
    assert [o.name for o in model.graph.outputs] == ["y", "t"] and ops(model) == {"Relu": 1, "Transpose": 1}


def test_a_transpose_read_twice_keeps_the_numbers(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 5, 3] x) => (float[1, 4, 5, 3] y, float[1, 3, 4, 5] z) {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    r = Relu(t)
    y = Transpose <perm = [0, 2, 3, 1]> (r)
    z = Sigmoid(t)
}""")
    feeds = {"x": rng.normal(size=(1, 4, 5, 3)).astype(np.float32)}
    assert_equivalent_and_idempotent(PushTransposes, model, feeds, rtol=0, atol=0)
    assert ops(model)["Transpose"] == 1  # Relu's pair cancels; Sigmoid still reads the one Transpose


def test_branches_reading_main_graph_values_are_left_to_read_them(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4, 5, 3] x, bool c) => (float[1, 4, 5, 3] y, float[1, 4, 5, 3] z) {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    r = Relu(t)
    y = Transpose <perm = [0, 2, 3, 1]> (r)
    z = If(c) <then_branch = g1 () => (float[1, 4, 5, 3] a) { a = Transpose <perm = [0, 2, 3, 1]> (t) },
               else_branch = g2 () => (float[1, 4, 5, 3] b) { b = Transpose <perm = [0, 2, 3, 1]> (r) }>
}""")
    for flag in (True, False):
        feeds = {"x": rng.normal(size=(1, 4, 5, 3)).astype(np.float32), "c": np.array(flag)}
        assert_equivalent_and_idempotent(PushTransposes, copy(model), feeds, rtol=0, atol=0)


def test_models_before_opset_13_are_refused():
    model = parse("""<ir_version: 7, opset_import: ["": 11]>
g (float[1, 4, 5, 3] x) => (float[1, 3, 4, 5] y) { t = Transpose <perm = [0, 3, 1, 2]> (x)
 y = Softmax(t) }""")
    with pytest.raises(ir.passes.PreconditionError, match="needs opset 13 or later"):
        PushTransposes()(model)
