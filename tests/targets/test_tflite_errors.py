"""Every message of the TFLite lowering: what cannot be lowered, named with the node, the rule and
what to do, raised before any file is written (most before calibration: the float graph is lowered
first)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import qcompile
from qcompile.errors import QCompileError
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.targets import get_target
from qcompile.targets.tflite_graph import TflQuant
from qcompile.targets.tflite_model import IoTensor, TfliteModel, lower_to_tflite
from qcompile.targets.tflite_run import LiteRtRunner
from tests.targets.tflite_cases import single_op


def _w(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _i64(*v: int) -> np.ndarray:
    return np.asarray(v, np.int64)


def _compile(model, target="tflite", shape=None, **kwargs):
    name = model.graph.inputs[0].name
    shape = shape or tuple(model.graph.inputs[0].shape)
    rng = np.random.default_rng(0)
    calib = [{name: rng.normal(size=shape).astype(np.float32)} for _ in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(model, target, calibration=calib, measure_latency=False, **kwargs)


def _node(op, inputs, out="y", **attrs):
    return helper.make_node(op, inputs, [out], name=f"{op.lower()}_node", **attrs)


CASES = {
    "unsupported op": (
        lambda: single_op([_node("Erf", ["x"])], {"x": (1, 8)}),
        r"no TFLite lowering for 1 node\(s\): erf_node \(Erf\); supported: Abs, Add, .*Conv,",
    ),
    "3-d conv": (
        lambda: single_op([_node("Conv", ["x", "w"])], {"x": (1, 2, 4, 4, 4)}, {"w": _w(3, 2, 1, 1, 1)}),
        r"Conv 'conv_node': 3-D convolution has no TFLite kernel",
    ),
    "gemm transA": (
        lambda: single_op([_node("Gemm", ["x", "w"], transA=1)], {"x": (8, 1)}, {"w": _w(8, 4)}),
        r"Gemm 'gemm_node': transA=1 has no FULLY_CONNECTED form",
    ),
    "matmul weight rank": (
        lambda: single_op([_node("MatMul", ["x", "w"])], {"x": (2, 3, 4)}, {"w": _w(2, 4, 5)}),
        r"MatMul 'matmul_node': a constant operand of rank 3 is not a weight matrix",
    ),
    "max pool pads": (
        lambda: single_op([_node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[0, 0, 2, 2])], {"x": (1, 2, 6, 6)}),
        r"MaxPool 'maxpool_node': pads \[\(0, 2\), \(0, 2\)\] are neither SAME nor VALID in TFLite and padding",
    ),
    "average pool pads": (
        lambda: single_op([_node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[0, 0, 2, 2])], {"x": (1, 2, 6, 6)}),
        r"AveragePool 'averagepool_node': pads .* with count_include_pad=0 are neither SAME nor VALID",
    ),
    "dilated pool": (
        lambda: single_op([_node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], {"x": (1, 2, 6, 6)}),
        r"MaxPool 'maxpool_node': dilated pooling has no TFLite kernel",
    ),
    "1-d pool": (
        lambda: single_op([_node("MaxPool", ["x"], kernel_shape=[2])], {"x": (1, 2, 6)}),
        r"MaxPool 'maxpool_node': only 2-D pooling lowers \(input rank 3\)",
    ),
    "negative slice step": (
        lambda: single_op(
            [_node("Slice", ["x", "s", "e", "a", "st"])],
            {"x": (1, 8)},
            {"s": _i64(6), "e": _i64(0), "a": _i64(1), "st": _i64(-1)},
        ),
        r"Slice 'slice_node': step -1 \(only positive steps lower\)",
    ),
    "edge pad": (
        lambda: single_op([_node("Pad", ["x", "p"], mode="edge")], {"x": (1, 8)}, {"p": _i64(0, 1, 0, 1)}),
        r"Pad 'pad_node': mode 'edge' \(constant and reflect lower\)",
    ),
    "pad value": (
        lambda: single_op(
            [_node("Pad", ["x", "p", "v"])], {"x": (1, 8)}, {"p": _i64(0, 1, 0, 1), "v": np.float32(2.0)}
        ),
        r"Pad 'pad_node': constant value 2.0 \(only 0 lowers\)",
    ),
    "pad axes": (
        lambda: single_op(
            [_node("Pad", ["x", "p", "", "ax"])], {"x": (1, 8)}, {"p": _i64(1, 1), "ax": _i64(1)}, opset=18
        ),
        r"Pad 'pad_node': the axes input is not supported",
    ),
    "resize mode": (
        lambda: single_op(
            [_node("Resize", ["x", "", "sc"], mode="cubic")],
            {"x": (1, 2, 4, 4)},
            {"sc": np.asarray([1, 1, 2, 2], np.float32)},
        ),
        r"Resize 'resize_node': mode=cubic, coordinate_transformation_mode=half_pixel has no TFLite resize; "
        r"supported:",
    ),
    "resize channels": (
        lambda: single_op(
            [_node("Resize", ["x", "", "sc"], mode="nearest")],
            {"x": (1, 2, 4, 4)},
            {"sc": np.asarray([1, 2, 1, 1], np.float32)},
        ),
        r"Resize 'resize_node': only spatial resizes of 4-D tensors lower",
    ),
    "gather indices": (
        lambda: single_op([_node("Gather", ["x", "i"])], {"x": (4, 8)}, {"i": _i64(0, 1, 2, 3).reshape(2, 2)}),
        r"Gather 'gather_node': indices must be a constant scalar or vector",
    ),
    "conv transpose pads": (
        lambda: single_op(
            [_node("ConvTranspose", ["x", "w"], strides=[2, 2], pads=[1, 0, 0, 0])],
            {"x": (1, 2, 4, 4)},
            {"w": _w(2, 3, 3, 3)},
        ),
        r"ConvTranspose 'convtranspose_node': pads \[1, 0, 0, 0\] with output \[8, 9\] are neither SAME nor VALID",
    ),
    "conv transpose groups": (
        lambda: single_op([_node("ConvTranspose", ["x", "w"], group=2)], {"x": (1, 2, 4, 4)}, {"w": _w(2, 1, 3, 3)}),
        r"ConvTranspose 'convtranspose_node': grouped or dilated transposed convolution",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lowering_error_names_the_node_and_the_rule(case, tmp_path):
    build, message = CASES[case]
    with pytest.raises(QCompileError, match=message):
        _compile(build()).save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _ir(nodes, inputs, weights=None, opset=18):
    """A float model with an int64 input (something static targets fix before lowering)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])],
        [onnx.numpy_helper.from_array(a, n) for n, a in (weights or {}).items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize(
    "nodes, message",
    [
        ([_node("Slice", ["x", "k", "e"])], r"Slice 'slice_node': input 1 \('k'\) is not constant"),
        ([_node("ReduceMean", ["x", "k"])], r"ReduceMean 'reducemean_node': axes are not constant"),
    ],
)
def test_parameters_computed_at_run_time(nodes, message):
    inputs = {"x": (TensorProto.FLOAT, [4, 8]), "k": (TensorProto.INT64, [1])}
    model = _ir(nodes, inputs, {"e": _i64(1)})
    with pytest.raises(QCompileError, match=message):
        lower_to_tflite(model, integer_io=False)


def test_grouped_convolution_on_tflite_micro():
    model = single_op([_node("Conv", ["x", "w"], group=2)], {"x": (1, 4, 6, 6)}, {"w": _w(4, 2, 3, 3)})
    with pytest.raises(
        QCompileError,
        match=r"Conv 'conv_node': grouped convolution \(group=2 of 4 channels\) has no kernel in TFLite Micro; "
        r"group=1 and depthwise \(group = input channels\) lower there, grouped ones on LiteRT \(target tflite\)",
    ):
        _compile(model, "tflm")


def test_a_clip_the_int8_range_does_not_perform():
    from qcompile.plan import QuantPlan, QuantSpec

    model = single_op([_node("Clip", ["x", "lo", "hi"])], {"x": (1, 8)}, {"lo": np.float32(-2), "hi": np.float32(3)})
    wide = QuantSpec("int8").with_params(np.float32(0.1), np.int8(0))  # [-12.8, 12.7]: no clip at -2 or 3
    with pytest.raises(
        QCompileError,
        match=r"Clip 'clip_node': bounds \(-2.0, 3.0\) are not one of TFLite's RELU ranges .* and the output's int8 "
        r"range does not clip there; keep the Clip float",
    ):
        _compile(model, plan=QuantPlan(tensors={"y": wide}))


def test_integer_only_target_refuses_a_float_island():
    model = single_op([_node("Erf", ["x"], "e"), _node("Relu", ["e"])], {"x": (1, 8)})
    with pytest.raises(QCompileError, match=r"no TFLite lowering"):
        _compile(model, "tflm")
    model = single_op([_node("Tanh", ["x"], "t"), _node("Relu", ["t"])], {"x": (1, 8)})
    with pytest.raises(
        QCompileError,
        match=r"integer-only target: 1 node\(s\) would run in float: tanh_node \(Tanh\); quantize them "
        r"\(policy naive\) or choose target tflite, which keeps float islands",
    ):
        _compile(model, "tflm", plan=QuantPlan(nodes={"tanh_node": NodeDecision("float", "pinned")}))


def test_tflite_keeps_a_float_island():
    model = single_op([_node("Tanh", ["x"], "t"), _node("Relu", ["t"])], {"x": (1, 8)})
    result = _compile(model, "tflite", plan=QuantPlan(nodes={"tanh_node": NodeDecision("float", "pinned")}))
    assert result.card["deployment"]["float_ops"] == 1
    assert {"TANH", "QUANTIZE", "RELU"} == set(result.card["deployment"]["ops"])


def test_unknown_target_option():
    with pytest.raises(QCompileError, match=r"tflite takes no option\(s\) \['reduce_range'\]; known: float_io"):
        get_target("tflite", reduce_range=True)
    with pytest.raises(QCompileError, match=r"tflm: precision 'a4w4' not in a8w8, a16w8"):
        get_target("tflm", precision="a4w4")


def test_runner_needs_every_input():
    model = TfliteModel(b"", [IoTensor("x", 0, (0, 1), "int8", TflQuant.of(0.1, 0), (1, 2))], [], {})
    runner = LiteRtRunner.__new__(LiteRtRunner)
    runner.model = model
    with pytest.raises(QCompileError, match=r"sample has no input 'x'"):
        runner.run({"y": np.zeros((1, 2), np.float32)})


def test_missing_litert_says_how_to_install(monkeypatch):
    from qcompile.targets import tflite_writer

    monkeypatch.setitem(sys.modules, "ai_edge_litert.schema_py_generated", None)
    with pytest.raises(QCompileError, match=r"TFLite targets need the ai-edge-litert package: pip install "):
        tflite_writer.schema()


def test_tflm_says_what_it_could_not_run():
    from qcompile.targets.tflite_graph import TflGraph, TflTensor
    from qcompile.targets.tflite_run import TflmRunner
    from qcompile.targets.tflite_writer import write_tflite

    g = TflGraph()
    x = g.add(TflTensor("x", (4,), "float32"))
    ids = g.constant("ids", np.asarray([0, 0, 1, 1], np.int32), "int32")
    y = g.add(TflTensor("y", (2,), "float32"))
    g.emit("SEGMENT_SUM", [x, ids], [y])
    g.inputs, g.outputs, g.signature = [x], [y], {"inputs": ["x"], "outputs": ["y"]}
    io = IoTensor("x", x, (0,), "float32", None, (4,))
    model = TfliteModel(write_tflite(g), [io], [IoTensor("y", y, (0,), "float32", None, (2,))], {})
    with pytest.raises(QCompileError, match=r"TFLite Micro cannot run the model: .*; it logged: .*SEGMENT_SUM"):
        TflmRunner(model, arena=65536)


def test_unknown_ethos_u_accelerator():
    with pytest.raises(QCompileError, match=r"unknown Ethos-U accelerator 'ethos-u99'; known: ethos-u55-32, "):
        get_target("ethos-u", accelerator="ethos-u99")


def test_vela_failure_is_reported():
    from qcompile.targets import ethos_u

    with pytest.raises(QCompileError, match=r"Vela could not compile the model for ethos-u55-128: "):
        ethos_u.run_vela(b"not a flatbuffer", "ethos-u55-128")


def test_an_integer_input_must_keep_its_fixed_value():
    model = _ir(
        [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT), _node("Mul", ["x", "kf"])],
        {"x": (TensorProto.FLOAT, [4, 1]), "k": (TensorProto.INT64, [1])},
    )
    rng = np.random.default_rng(0)
    calib = [{"x": rng.normal(size=(4, 1)).astype(np.float32), "k": np.asarray([2 if i < 5 else 3])} for i in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            QCompileError,
            match=r"input 'k' was fixed to \[2\] \(the first calibration sample's\) because the target's graph is "
            r"static, but calibration sample 5 has \[3\]; compile one model per value",
        ):
            qcompile.compile(model, "tflite", calibration=calib, measure_latency=False)


def _dynamic_conv():
    return single_op(
        [_node("Conv", ["x", "w"], pads=[1, 1, 1, 1])],
        {"x": ("N", 3, 6, 6)},
        {"w": _w(4, 3, 3, 3)},
        output_shape=("N", 4, 6, 6),
    )


def test_tflite_micro_asks_for_the_input_shape():
    with pytest.raises(
        QCompileError,
        match=r"input 'x' has dynamic dimensions \['N', 3, 6, 6\]; this target needs static shapes: give "
        r"--input-shape x=1,3,6,6 \(the first calibration sample's\)",
    ):
        _compile(_dynamic_conv(), "tflm", shape=(1, 3, 6, 6))
    result = _compile(_dynamic_conv(), "tflm", shape=(1, 3, 6, 6), input_shapes={"x": [1, 3, 6, 6]})
    assert result.card["static_shapes"] == {"x": [1, 3, 6, 6]}
    result = _compile(_dynamic_conv(), "tflite", shape=(1, 3, 6, 6))  # LiteRT: the data's shape, recorded
    assert result.card["static_shapes"] == {"x": [1, 3, 6, 6]}


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"y": [1, 3, 6, 6]}, r"--input-shape names 'y', which is not an input of the model; inputs: x"),
        ({"x": [1, 3, 6]}, r"--input-shape x=1,3,6 has 3 dimensions; input 'x' has 4"),
        ({"x": [1, 4, 6, 6]}, r"--input-shape x=1,4,6,6: input 'x' is \['N', 3, 6, 6\]"),
    ],
)
def test_input_shape_must_fit_the_input(shapes, message):
    with pytest.raises(QCompileError, match=message):
        _compile(_dynamic_conv(), "tflm", shape=(1, 3, 6, 6), input_shapes=shapes)


@pytest.mark.parametrize("flag", ["x", "x=", "x=1,a", "=1,2", "x=1,0"])
def test_cli_input_shape_format(flag, capsys):
    from qcompile.cli import main

    code = main(["compile", "m.onnx", "--target", "tflm", "--calib", "c.npz", "--input-shape", flag, "-o", "o"])
    assert code == 2
    assert f"--input-shape {flag!r}: expected NAME=D0,D1,... with positive sizes" in capsys.readouterr().err


def test_ethos_u_card_says_which_ops_fall_back_and_why():
    from tests.targets.tflite_cases import CASES, samples_for

    case = CASES["sqrt_lookup_table"]  # CAST and GATHER (the lookup table) have no Ethos-U kernel
    calib = samples_for(case, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qcompile.compile(
            case.build(), "ethos-u", calibration=calib, evaluation=calib[:2], measure_latency=False
        )
    vela = result.card["deployment"]["vela"]
    assert vela["cpu_operators"] == 2 and vela["npu_operators"] == 1
    assert sorted(f.split(" ")[0] for f in vela["cpu_fallbacks"]) == ["CAST", "GATHER"]
    assert all(f.endswith(": Unsupported opType") for f in vela["cpu_fallbacks"])
    assert "falls back to the CPU: GATHER ('y_q'): Unsupported opType" in qcompile.card.render_markdown(result.card)


def test_float_island_keeps_a_quantized_bias():
    """A Conv whose output is not quantized runs in float32; its int32 bias (read through a DQ) is
    dequantized into the float kernel, not dropped."""
    import onnxruntime as ort

    from qcompile.targets.tflite_run import LiteRtRunner

    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, size=(2, 3, 1, 1)).astype(np.int8)
    b = rng.integers(-2000, 2000, size=2).astype(np.int32)
    inits = {
        "w": w,
        "ws": np.float32(0.01),
        "wz": np.int8(0),
        "b": b,
        "bs": np.float32(0.001),
        "bz": np.int32(0),
        "xs": np.float32(0.1),
        "xz": np.int8(0),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq"),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], name="bdq"),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    tm = lower_to_tflite(ir.from_proto(proto))
    assert tm.float_ops == ["conv (Conv)"]
    x = rng.normal(size=(1, 3, 2, 2)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    got = LiteRtRunner(tm).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
