"""The flatbuffer as TFLite's loaders expect it: identifier, schema version, empty buffer 0, 16-byte
aligned constant buffers, both builtin-code fields, op versions, the signature with ONNX names."""

from __future__ import annotations

import warnings

import ai_edge_litert.schema_py_generated as S
import flatbuffers
import numpy as np
import pytest

import qcompile
from qcompile.targets.tflite import tflite_model_of
from qcompile.targets.tflite_graph import TflGraph, TflQuant, TflTensor
from qcompile.targets.tflite_versions import op_version
from qcompile.targets.tflite_writer import BUFFER_ALIGNMENT, SIGNATURE_KEY, write_tflite
from tests.helpers import SAMPLES


@pytest.fixture(scope="module")
def digits():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(
            SAMPLES / "digits_cnn.onnx",
            "tflite",
            calibration=SAMPLES / "digits_calib.npz",
            evaluation=SAMPLES / "digits_test.npz",
            measure_latency=False,
        )
    return result, tflite_model_of(result.model, result.target)


def _buffer_starts(data: bytes) -> list[int]:
    model = S.Model.GetRootAs(data, 0)
    starts = []
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        o = flatbuffers.number_types.UOffsetTFlags.py_type(buf._tab.Offset(4))
        if o and buf.DataLength():
            starts.append(buf._tab.Vector(o))
    return starts


def test_constant_buffers_start_on_16_bytes(digits):
    _, tm = digits
    starts = _buffer_starts(tm.data)
    assert len(starts) >= 10  # weights and biases of 3 convolutions and 2 fully connected layers
    assert all(s % BUFFER_ALIGNMENT == 0 for s in starts), [s % BUFFER_ALIGNMENT for s in starts]


def test_file_layout_matches_the_schema_rules(digits):
    _, tm = digits
    assert tm.data[4:8] == b"TFL3"
    model = S.ModelT.InitFromPackedBuf(bytearray(tm.data), 0)
    assert model.version == 3
    assert model.buffers[0].data is None
    for code in model.operatorCodes:
        assert code.builtinCode == code.deprecatedBuiltinCode  # every code used here is below 127
    sig = model.signatureDefs[0]
    assert sig.signatureKey.decode() == SIGNATURE_KEY
    assert [m.name.decode() for m in sig.inputs] == ["input"]
    assert [m.name.decode() for m in sig.outputs] == ["logits"]
    sub = model.subgraphs[0]
    assert [int(i) for i in sub.inputs] == [m.tensorIndex for m in sig.inputs]
    for t in sub.tensors:
        if t.quantization is not None and t.quantization.scale is not None:
            assert len(t.quantization.scale) == len(t.quantization.zeroPoint)


def test_op_versions_are_the_converters(digits):
    _, tm = digits
    model = S.ModelT.InitFromPackedBuf(bytearray(tm.data), 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    versions = {names[c.builtinCode]: c.version for c in model.operatorCodes}
    assert versions == {"CONV_2D": 3, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2, "RESHAPE": 1}


def test_mul_version_follows_its_multiplier():
    g = TflGraph()
    a = g.add(TflTensor("a", (1, 4), "int8", TflQuant.of(0.5, 0)))
    b = g.add(TflTensor("b", (1, 4), "int8", TflQuant.of(0.5, 0)))
    small = g.add(TflTensor("y", (1, 4), "int8", TflQuant.of(1.0, 0)))
    large = g.add(TflTensor("z", (1, 4), "int8", TflQuant.of(0.1, 0)))
    assert op_version(g.emit("MUL", [a, b], [small]), g) == 2  # 0.5 · 0.5 / 1 < 1
    assert op_version(g.emit("MUL", [a, b], [large]), g) == 3  # 0.5 · 0.5 / 0.1 ≥ 1


def test_a_float_graph_writes_and_runs():
    from ai_edge_litert.interpreter import Interpreter

    g = TflGraph()
    x = g.add(TflTensor("x", (1, 3), "float32"))
    w = g.constant("w", np.eye(3, dtype=np.float32) * 2, "float32")
    y = g.add(TflTensor("y", (1, 3), "float32"))
    g.emit("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions", fusedActivationFunction="NONE")
    g.inputs, g.outputs, g.signature = [x], [y], {"inputs": ["x"], "outputs": ["y"]}
    it = Interpreter(model_content=write_tflite(g))
    it.allocate_tensors()
    it.set_tensor(x, np.asarray([[1, 2, 3]], np.float32))
    it.invoke()
    np.testing.assert_array_equal(it.get_tensor(y), [[2, 4, 6]])


def test_unknown_option_field_is_refused():
    g = TflGraph()
    x = g.add(TflTensor("x", (1, 3), "float32"))
    g.emit("RELU", [x], [x], "Conv2DOptions", notAField=1)
    g.inputs, g.outputs = [x], [x]
    g.signature = {"inputs": ["x"], "outputs": ["x"]}
    with pytest.raises(ValueError, match="Conv2DOptions has no field 'notAField'"):
        write_tflite(g)


def test_tensor_dtype_is_checked():
    with pytest.raises(ValueError, match=r"tensor 'x': dtype float64 not in"):
        TflTensor("x", (1,), "float64")
