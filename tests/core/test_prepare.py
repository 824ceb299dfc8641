"""Stage 1 on its own: a float graph in, a clean float graph out, with the same numbers."""

import numpy as np
import onnx
import onnx_ir as ir

from qcompile.prepare import prepare, prepare_passes
from qcompile.targets import get_target
from tests.helpers import check, copy, ops, parse, run

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
    assert "Dropout" in prepared.ops_before and prepared.name == "model" and prepared.source is None
    assert [s.name for s in prepared.inputs] == ["x"]


def test_prepare_passes_reach_a_fixed_point(rng):
    model = parse(RESIDUE)
    passes = prepare_passes(get_target("ort-cpu"))
    assert passes(model).modified
    before = onnx.printer.to_text(ir.to_proto(model))
    passes(model)
    assert onnx.printer.to_text(ir.to_proto(model)) == before
