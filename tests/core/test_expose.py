"""Values inside If branches, exposed to ONNX Runtime as main-graph outputs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompile.errors import QCompileError
from qcompile.expose import body_kinds, exposable_values, expose_branch_values
from qcompile.runtime import make_session, run_session
from tests.helpers import parse
from tests.support.quant_models import if_feeds, if_model


def _conv_relu(x, w, b):
    """Conv (3×3, pad 1, one image) + bias in numpy: the independent reference."""
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], *x.shape[2:]))
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            out[:, i, j] = np.tensordot(w, padded[:, i : i + 3, j : j + 3], axes=3)
    return (out + b[:, None, None])[None]


@pytest.mark.parametrize("nested", [False, True])
def test_branch_values_come_out_of_the_session(rng, nested):
    model = if_model(rng, nested)
    names = [v.name for v in exposable_values(model)]
    assert {"then_c0", "then_r0", "else_y"} <= set(names)
    weights = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    session = make_session(model, optimize=False, extra_outputs=names)
    for mode in (1, 0):
        sample = if_feeds(rng, 1, mode)[0]
        got = run_session(session, sample, ["y", *names])
        conv0 = _conv_relu(sample["x"], weights["w0"], weights["b0"])
        if mode == 1:  # the then-branch ran: its values are there, the else-branch's are empty
            np.testing.assert_allclose(got["then_c0"], conv0, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got["then_r0"], np.maximum(conv0, 0), rtol=1e-4, atol=1e-4)
            assert got["else_y"].size == 0
        else:
            assert got["then_c0"].size == 0
            np.testing.assert_allclose(got["else_y"], got["y"], rtol=1e-6)
    if nested:  # the inner If's values travel up two levels
        assert {"inner_y", "inner_y2"} <= set(names)
        sample = if_feeds(rng, 1, 1)[0]
        got = run_session(session, sample, ["y", "inner_y", "inner_y2"])
        np.testing.assert_array_equal(got["inner_y"], got["y"])
        assert got["inner_y2"].size == 0


def test_the_users_model_is_not_changed(rng):
    model = if_model(rng)
    before = len(list(model.graph.all_nodes()))
    make_session(model, optimize=False, extra_outputs=["then_c0"])
    assert len(list(model.graph.all_nodes())) == before
    assert [o.name for o in model.graph.outputs] == ["y"]


LOOP = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2] x, int64 n) => (float[2] out, float[N, 2] scan) {
  t = Constant <value = bool {1}> ()
  out, scan = Loop (n, t, x) <body = body (int64 i, bool c, float[2] acc)
                                     => (bool c_out, float[2] acc_out, float[2] twice) {
      c_out = Identity (c)
      acc_out = Add (acc, acc)
      twice = Identity (acc_out)
  }>
}
"""


def test_loop_body_values_come_out_stacked_over_iterations(rng):
    model = parse(LOOP)
    assert [v.name for v in exposable_values(model)] == ["acc", "acc_out", "twice"]  # floats only
    assert set(body_kinds(model).values()) == {"Loop"}
    x = rng.normal(size=2).astype(np.float32)
    session = make_session(model, optimize=False, extra_outputs=["acc", "acc_out"])
    got = run_session(session, {"x": x, "n": np.array(3, np.int64)}, ["out", "acc", "acc_out"])
    np.testing.assert_allclose(got["acc"], np.stack([x, 2 * x, 4 * x]), rtol=1e-6)  # what each iteration read
    np.testing.assert_allclose(got["acc_out"], np.stack([2 * x, 4 * x, 8 * x]), rtol=1e-6)
    np.testing.assert_allclose(got["out"], 8 * x, rtol=1e-6)


IF_IN_LOOP = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2] x, int64 n, bool flag) => (float[2] out) {
  t = Constant <value = bool {1}> ()
  out = Loop (n, t, x) <body = body (int64 i, bool c, float[2] acc) => (bool c_out, float[2] acc_out) {
      c_out = Identity (c)
      acc_out = If (flag) <then_branch = th () => (float[2] a) { a = Add (acc, acc) },
                           else_branch = el () => (float[2] b) { b = Mul (acc, acc) }>
  }>
}
"""


def test_an_if_inside_a_loop_body_is_not_exposed():
    model = parse(IF_IN_LOOP)
    assert [v.name for v in exposable_values(model)] == ["acc", "acc_out"]
    assert sorted(body_kinds(model).values()) == ["If in a loop", "If in a loop", "Loop"]
    graph = onnx.parser.parse_model(IF_IN_LOOP).graph
    with pytest.raises(QCompileError, match=r"cannot observe \['a'\]: values of an If branch inside a Loop/Scan"):
        expose_branch_values(graph, {"a": TensorProto.FLOAT})


def test_an_unknown_name_is_refused(rng):
    with pytest.raises(QCompileError, match=r"cannot observe \['nope'\]: the model has no such typed value"):
        make_session(if_model(rng), optimize=False, extra_outputs=["nope"])
