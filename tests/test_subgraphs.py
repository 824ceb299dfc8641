"""Quantizing inside If branches (silero VAD keeps its whole network in one): calibration sees
the branch that runs, Q/DQ goes into the branch, ONNX Runtime fuses it there, the branch no
sample took stays float, and the precision search works on branch nodes as on any other."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import qcompile
from qcompile.quant_math import sqnr_db
from qcompile.runtime import fused_op_counts
from tests.support.quant_models import if_feeds, if_model

THEN_NODES = ("then_conv0", "then_relu0", "then_conv1")


def _branch(proto: onnx.ModelProto, name: str) -> onnx.GraphProto:
    node = next(n for n in proto.graph.node if n.op_type == "If")
    return next(a.g for a in node.attribute if a.name == name)


def _outputs(proto: onnx.ModelProto, samples, optimized_path=None):
    so = ort.SessionOptions()
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, s)[0] for s in samples])


def test_naive_quantizes_inside_the_branch_that_runs(rng, tmp_path):
    model = if_model(rng)
    float_proto = ir.to_proto(model)
    calib, held = if_feeds(rng, 16), if_feeds(rng, 8)
    result = qcompile.compile(model, calibration=calib, evaluation=held, measure_latency=False)
    assert {n: result.plan.nodes[n].precision for n in THEN_NODES} == dict.fromkeys(THEN_NODES, "int8")
    assert result.plan.nodes["else_conv0"].reason == "inside an If branch that no calibration sample took"
    proto = result.to_proto()
    then = _branch(proto, "then_branch")
    # the weights' DequantizeLinear sits in the branch, next to its Conv: what ORT's fusion needs
    assert sum(n.op_type == "DequantizeLinear" for n in then.node) >= 3
    int8 = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(int8) >= 2
    # ORT fuses both Convs of the branch into integer kernels; the untaken branch's Conv stays float
    want = _outputs(float_proto, held)
    got = _outputs(proto, held, tmp_path / "opt.onnx")
    assert fused_op_counts(onnx.load(tmp_path / "opt.onnx").graph.node) == {"integer": 2, "float": 1}
    assert result.card["ort_kernels"] == {"integer": 2, "float": 1}
    assert sqnr_db(want, got) > 25.0
    assert abs(result.card["fidelity"]["outputs"][0]["sqnr_db"] - sqnr_db(want, got)) < 0.01
    # the other branch still runs: float Conv on the (quantized) input
    other = if_feeds(rng, 4, mode=0)
    assert sqnr_db(_outputs(float_proto, other), _outputs(proto, other)) > 25.0


def test_hybrid_keeps_the_planted_branch_conv_float_and_meets_its_budget_held_out(rng):
    # x's channel 0 is 1000× the others and the first Conv divides it back: one int8 scale for x
    # loses channels 1-3, so only the first Conv (the one reading x) must stay float
    calib, held = if_feeds(rng, 32, loud=1000), if_feeds(rng, 12, loud=1000)
    naive = qcompile.compile(if_model(np.random.default_rng(7), loud=1000), calibration=calib, evaluation=held,
                             measure_latency=False, metric="sqnr", floor=30)  # fmt: skip
    assert not naive.card["budget"]["met"]
    result = qcompile.compile(if_model(np.random.default_rng(7), loud=1000), calibration=calib, evaluation=held,
                              policy="hybrid", metric="sqnr", floor=30, measure_latency=False)  # fmt: skip
    assert result.card["search"]["float_groups"] == ["then_conv0"]
    assert result.plan.nodes["then_conv1"].precision == "int8"
    assert result.card["budget"]["met"], result.card["budget"]
    assert result.card["ort_kernels"] == {"integer": 1, "float": 2}


def test_naive_quantizes_inside_a_loop_body(rng, tmp_path):
    from tests.support.quant_models import loop_feeds, loop_model

    model = loop_model(rng)
    float_proto = ir.to_proto(model)
    calib, held = loop_feeds(rng, 16), loop_feeds(rng, 8)
    result = qcompile.compile(model, calibration=calib, evaluation=held, measure_latency=False)
    assert result.plan.nodes["body_matmul"].precision == "int8"
    assert "w" in result.plan.tensors and "acc" in result.plan.tensors  # the body's input, read each iteration
    proto = result.to_proto()
    body = next(a.g for a in proto.graph.node[-1].attribute if a.name == "body")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in body.node}
    want = _outputs(float_proto, held)
    got = _outputs(proto, held, tmp_path / "opt.onnx")
    assert fused_op_counts(onnx.load(tmp_path / "opt.onnx").graph.node)["integer"] >= 1
    assert result.card["ort_kernels"]["integer"] >= 1
    assert sqnr_db(want, got) > 25.0


def test_inspect_counts_nodes_inside_bodies(tmp_path, rng):
    from tests.test_cli import qc

    ir.save(if_model(rng), tmp_path / "if.onnx")
    r = qc("inspect", tmp_path / "if.onnx")
    assert r.returncode == 0, r.stderr
    assert "7 nodes (4 inside If/Loop/Scan bodies)" in r.stdout
    assert "4 quantizable (Conv, Relu)" in r.stdout
