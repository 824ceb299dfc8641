import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qcompile.quant_math import dequantize, int_range, quantize, scale_zero_point, sqnr_db
from qcompile.runtime import make_session

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(lo=finite, hi=finite, dtype=st.sampled_from(["int8", "uint8", "int16", "uint16"]), symmetric=st.booleans())
def test_range_endpoints_and_zero_are_representable(lo, hi, dtype, symmetric):
    lo, hi = min(lo, hi), max(lo, hi)
    qr = int_range(dtype, symmetric=symmetric)
    scale, zp = scale_zero_point(lo, hi, qr, symmetric=symmetric)
    assert scale > 0 and qr.qmin <= int(zp) <= qr.qmax
    # zero is exact, and the calibrated range quantizes within half a step
    assert dequantize(quantize(np.zeros(1), scale, zp, qr), scale, zp)[0] == 0.0
    for v in (min(lo, 0.0), max(hi, 0.0)):
        back = dequantize(quantize(np.array([v]), scale, zp, qr), scale, zp)[0]
        assert abs(back - v) <= 0.5 * scale * (1 + 1e-5) + 1e-6 * abs(v)


def test_reduce_range_halves_int8():
    assert (int_range("int8", reduce_range=True).qmin, int_range("int8", reduce_range=True).qmax) == (-64, 63)
    assert (int_range("int8", symmetric=True, reduce_range=True).qmin) == -63
    assert int_range("uint8", reduce_range=True).qmax == 127


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="'int7' is not an integer quantization dtype; known: int8"):
        int_range("int7")


@pytest.mark.parametrize("dtype,onnx_type", [("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8)])
def test_quantize_matches_onnxruntime_per_channel(rng, dtype, onnx_type):
    x = (rng.normal(size=(4, 3, 5)) * 3).astype(np.float32)
    x[0, 0, 0] = 2.5 * 0.05  # a tie: round half to even
    qr = int_range(dtype)
    scale, zp = scale_zero_point(x.min(axis=(0, 2)), x.max(axis=(0, 2)), qr, symmetric=False)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx_type, x.shape)],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zp, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    got = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize(x, scale, zp, qr, axis=1), got)


def test_sqnr():
    ref = np.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)
