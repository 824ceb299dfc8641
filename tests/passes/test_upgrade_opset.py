import numpy as np
import pytest

from qcompile.errors import QCompileError
from qcompile.ir_utils import onnx_opset
from qcompile.passes.upgrade_opset import UpgradeOpset
from tests.helpers import assert_equivalent_and_idempotent, parse

OPSET11 = """<ir_version: 6, opset_import: ["": 11]>
g (float[2, 6] x) => (float[2, 3] a, float[2, 3] b, float[2, 6] s) {
    a, b = Split <axis = 1> (x)
    s = Softmax <axis = 1> (x)
}"""


def test_upgrades_to_21_with_same_numbers(rng):
    model = parse(OPSET11)
    result = assert_equivalent_and_idempotent(UpgradeOpset, model, {"x": rng.normal(size=(2, 6)).astype(np.float32)})
    assert result.modified and onnx_opset(model) == 21 and model.ir_version >= 10


def test_leaves_new_models_alone():
    model = parse('<ir_version: 10, opset_import: ["": 21]> g (float[2] x) => (float[2] y) { y = Relu(x) }')
    assert not UpgradeOpset()(model).modified


def test_falls_back_to_minimum_then_fails_with_reason(monkeypatch):
    import qcompile.passes.upgrade_opset as mod

    def refuse(model, version, fallback=True):
        raise RuntimeError(f"no adapter for opset {version}")

    monkeypatch.setattr(mod.version_converter, "convert_version", refuse)
    model = parse(OPSET11)
    with pytest.raises(
        QCompileError, match="cannot upgrade the model from opset 11 to 13 or later: opset 13: no adapter"
    ):
        UpgradeOpset()(model)
    assert onnx_opset(model) == 11
