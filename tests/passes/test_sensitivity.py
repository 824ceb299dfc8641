"""Quantization groups and the sensitivity ranking."""

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from qcompile.budget import Budget, parse_metric
from qcompile.metrics import OutputKind
from qcompile.passes.infer_shapes import InferShapes
from qcompile.passes.quant_groups import quant_groups, quantized_tensors_when, weight_macs
from qcompile.passes.sensitivity import own_sqnr_db, rank_groups
from qcompile.passes.switchable import Evaluator
from qcompile.plan import QuantSpec
from qcompile.targets import get_target
from tests.support.quant_models import conv_model, feeds, planned


def test_groups_fuse_activations_and_count_macs(rng):
    model = conv_model(rng)
    plan, _ = planned(model, feeds(rng))
    groups = {g.name: g for g in quant_groups(model, plan, get_target("ort-cpu"))}
    assert groups["conv"].nodes == ("conv", "relu") and groups["conv"].output == "r"
    assert groups["conv"].macs == 4 * 4 * 4 * (2 * 3 * 3)  # |output| · C_in · kh · kw
    assert groups["fc"].macs == 5 * 16 and groups["pool"].macs == 0
    assert set(groups) == {"conv", "pool", "flatten", "fc", "sigmoid"}
    # the pool's tensors stay quantized while its int8 neighbours need them
    everything = quantized_tensors_when(groups.values(), set())
    assert quantized_tensors_when(groups.values(), {"pool"}) == everything


def planted_chain(rng, width=16):
    """x → MatMul → Relu → MatMul → Relu → MatMul → y, where the middle output has one channel
    1000× larger than the rest (and the last weight scales it back): one per-tensor scale then
    wipes out every other channel of that tensor."""
    a = rng.normal(size=(width, width)).astype(np.float32) / 4
    b = rng.normal(size=(width, width)).astype(np.float32) / 4
    c = rng.normal(size=(width, width)).astype(np.float32) / 4
    b[:, 0] *= 1000
    c[0, :] /= 1000
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h1"], "fc_a"),
        helper.make_node("Relu", ["h1"], ["r1"], "relu_a"),
        helper.make_node("MatMul", ["r1", "b"], ["h2"], "fc_b"),
        helper.make_node("Relu", ["h2"], ["r2"], "relu_b"),
        helper.make_node("MatMul", ["r2", "c"], ["y"], "fc_c"),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(v, k) for k, v in {"a": a, "b": b, "c": c}.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    return model


def test_the_ranking_finds_the_planted_node(rng):
    model = planted_chain(rng)
    samples = [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(16)]
    plan, _ = planned(model, samples)
    groups = quant_groups(model, plan, get_target("ort-cpu"))
    evaluator = Evaluator(model, plan, groups, samples, {"y": OutputKind()}, Budget(parse_metric("sqnr"), floor=30))
    all_int8, table = rank_groups(evaluator)
    assert table[0].candidate == "tensor r2" and table[0].groups == ("fc_b", "fc_c")  # the 1000× tensor
    assert table[0].gain > 10 and all_int8 < 20


def test_weight_macs_of_each_weighted_op():
    weights = {"wb": (2, 6, 7), "wk": (6,), "wt": (9, 6), "wu": (3, 2, 3, 3)}
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wb"], ["b"]),
            helper.make_node("MatMul", ["x", "wk"], ["k"]),
            helper.make_node("Gemm", ["v", "wt"], ["t"], transB=1),
            helper.make_node("ConvTranspose", ["i", "wu"], ["u"]),
        ],
        "macs",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
            for n, s in {"x": [2, 5, 6], "v": [4, 6], "i": [1, 3, 8, 8]}.items()
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "bktu"],
        [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in weights.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    macs = {n.outputs[0].name: weight_macs(n) for n in model.graph}
    # |output| · K for the products; |input| · M · kh · kw for the transposed convolution
    assert macs == {"b": 2 * 5 * 7 * 6, "k": 2 * 5 * 6, "t": 4 * 9 * 6, "u": 3 * 8 * 8 * 2 * 3 * 3}


def test_unknown_dimensions_count_once_in_weight_macs():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "macs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((6, 7), np.float32), "w")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    node = model.graph.node(0)
    assert weight_macs(node) == 5 * 7 * 6  # per item of the symbolic batch
    node.outputs[0].shape = ir.Shape([-1, 5, 7])  # as some exporters write an unknown dimension
    assert weight_macs(node) == 5 * 7 * 6


def test_own_sqnr_of_a_tensor_with_a_scale_per_channel_matches_numpy(rng):
    spread = np.array([1.0, 40.0, 0.5, 8.0])[None, :, None, None]
    values = [(rng.normal(size=(1, 4, 3, w)) * spread).astype(np.float32) for w in (5, 7)]  # widths differ
    peaks = np.max([np.abs(v).max(axis=(0, 2, 3)) for v in values], axis=0)
    scales = peaks / 127.0
    spec = QuantSpec("uint8", scale=tuple(scales), zero_point=(128,) * 4, axis=1)
    x = np.concatenate([v.ravel() for v in values]).astype(np.float64)
    s = np.concatenate([np.broadcast_to(scales[None, :, None, None], v.shape).ravel() for v in values])
    rounded = (np.clip(np.round(x / s) + 128, 0, 255) - 128) * s
    want = 10 * np.log10(np.sum(x**2) / np.sum((x - rounded) ** 2))
    assert np.isclose(own_sqnr_db(values, spec), want, atol=1e-3)
    one = QuantSpec("uint8", scale=(float(peaks.max() / 127.0),), zero_point=(128,))
    assert own_sqnr_db(values, spec) > own_sqnr_db(values, one) + 3  # the narrow channels rounded finer
