"""Stage 1 on its own: a float graph in, a clean float graph out, with the same numbers."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompile.errors import QCompileError
from qcompile.prepare import prepare, prepare_passes
from qcompile.targets import get_target
from tests.helpers import SAMPLES, check, copy, ops, parse, run

RESIDUE = """<ir_version: 8, opset_import: ["": 13]>
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
    d = Dropout(r)
    k = Identity(d)
    y = Mul(k, c)
}"""


def test_constants_shapes_and_no_ops_fold_away(rng):
    model = parse(RESIDUE)
    feeds = {"x": rng.normal(size=(2, 3, 4)).astype(np.float32)}
    want = run(copy(model), feeds)
    prepared = prepare(ir.to_proto(model), get_target("ort-cpu"))
    assert ops(prepared.model) == {"Reshape": 1, "Mul": 1}
    check(prepared.model)
    np.testing.assert_allclose(run(prepared.model, feeds)["y"], want["y"], rtol=1e-6)
    names = [n.name for n in prepared.model.graph]
    assert all(names) and len(set(names)) == len(names)
    assert prepared.opset_before == 13 and prepared.model.opset_imports[""] == 21
    assert prepared.ops_before["Dropout"] == 1 and prepared.name == "model" and prepared.source is None
    assert [s.name for s in prepared.inputs] == ["x"]


def test_prepare_passes_reach_a_fixed_point(rng):
    model = parse(RESIDUE)
    passes = prepare_passes(get_target("ort-cpu"))
    assert passes(model).modified
    before = onnx.printer.to_text(ir.to_proto(model))
    passes(model)
    assert onnx.printer.to_text(ir.to_proto(model)) == before


def test_a_failing_library_pass_surfaces_the_users_error(monkeypatch):
    import qcompile.passes.upgrade_opset as mod

    def refuse(model, version, fallback=True):
        raise RuntimeError(f"no adapter for opset {version}")

    monkeypatch.setattr(mod.version_converter, "convert_version", refuse)
    model = parse(RESIDUE.replace('"": 13', '"": 11'))
    with pytest.raises(QCompileError, match="^cannot upgrade the model from opset 11 to 13 or later"):
        prepare(ir.to_proto(model), get_target("ort-cpu"))


def test_weights_whose_data_does_not_match_their_shape_are_named():
    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    gamma = next(t for t in proto.graph.initializer if t.name.endswith("gamma"))
    gamma.dims[0] = 7
    with pytest.raises(QCompileError, match=f"tensor '{gamma.name}': its stored data does not match"):
        prepare(proto, get_target("ort-cpu"))


def test_identity_returning_an_outer_value_from_a_branch_is_kept(rng):
    branch = "then_out = Identity(r)"
    model = parse(f"""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 4] x) => (float[1, 4] z) <float zero = {{0}}> {{
    r = Relu(x)
    s = ReduceSum <keepdims = 0> (x)
    c = Greater(s, zero)
    y = If(c) <then_branch = g1 () => (float[1, 4] then_out) {{ {branch} }},
               else_branch = g2 () => (float[1, 4] else_out) {{ else_out = Identity(r) }}>
    z = Add(y, r)
}}""")
    feeds = {"x": rng.normal(size=(1, 4)).astype(np.float32)}
    prepared = prepare(ir.to_proto(copy(model)), get_target("ort-cpu"))
    np.testing.assert_allclose(run(prepared.model, feeds)["z"], run(model, feeds)["z"])


def test_batchnorm_after_a_shared_weight_is_left_alone(rng):
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y, float[1, 2, 4, 4] y2)
  <float[2, 2, 1, 1] w = {1, 2, 3, 4}, float[2] g = {1, 2}, float[2] b = {0, 1}, float[2] m = {0, 1},
   float[2] v = {1, 2}> {
    c = Conv(x, w)
    y = BatchNormalization(c, g, b, m, v)
    y2 = Conv(x, w)
}""")
    prepared = prepare(ir.to_proto(model), get_target("ort-cpu"))
    assert ops(prepared.model) == {"Conv": 2, "BatchNormalization": 1}  # upstream copies no shared weight
