from qcompile.passes.infer_shapes import InferShapes
from tests.helpers import parse


def test_infers_intermediate_shapes():
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 3] x) => (float[3, 2] y) { t = Relu(x)
 y = Transpose(t) }""")
    InferShapes()(model)
    t = model.graph.node(0).outputs[0]
    assert list(t.shape) == [2, 3] and model.meta["qcompile.shape_inference"] == "ok"


def test_failure_is_recorded_not_raised(monkeypatch):
    import qcompile.passes.infer_shapes as mod

    class Broken:
        def __init__(self, **kwargs):
            pass

        def __call__(self, model):
            raise RuntimeError("[ShapeInferenceError] Incomplete symbolic shape inference\nmore detail")

    monkeypatch.setattr(mod, "ShapeInferencePass", Broken)
    model = parse("""<ir_version: 8, opset_import: ["": 17]>
g (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }""")
    assert not InferShapes()(model).modified
    assert model.meta["qcompile.shape_inference"] == "failed: [ShapeInferenceError] Incomplete symbolic shape inference"
