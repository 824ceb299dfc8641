import numpy as np
import onnx_ir as ir
import pytest

from qcompile.arrival import take_in
from qcompile.errors import QCompileError
from qcompile.model_io import load_model
from qcompile.quant_form import detect_form
from tests.support.quant_models import conv_model
from tests.support.quantized_files import ort_dynamic, ort_static


def _take(model, dequantize=False):
    return take_in(model, detect_form(model), dequantize)


def test_a_float_model_is_left_alone(rng):
    model = conv_model(rng)
    before = ir.to_proto(model).SerializeToString()
    assert _take(model) is None and ir.to_proto(model).SerializeToString() == before


def test_each_quantized_form_leaves_a_float_graph(tmp_path, rng):
    _, qdq = ort_static(tmp_path, rng)
    (tmp_path / "qop").mkdir()
    _, qoperator = ort_static(tmp_path / "qop", rng, "QOperator")
    for path in (qdq, qoperator):
        model = load_model(path)
        plan = _take(model)
        assert plan is not None and plan.tensors and detect_form(model).is_float
    dynamic = load_model(ort_dynamic(tmp_path, np.random.default_rng(1)))
    with pytest.raises(QCompileError, match="the model is dynamically quantized"):
        _take(dynamic)
    assert _take(dynamic, dequantize=True) is None and detect_form(dynamic).is_float


def test_dequantize_wants_a_dynamic_model(rng):
    with pytest.raises(QCompileError, match="--dequantize is for dynamically quantized models; this one is float"):
        _take(conv_model(rng), dequantize=True)
