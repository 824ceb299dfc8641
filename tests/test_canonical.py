"""The canonical float graph end to end: converter residue in, the same numbers out, and a
naive int8 compile whose Convs all run as QLinearConv with nothing left between them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompile
from qcompile.prepare import canonical_passes, prepare
from qcompile.runtime import SessionSource, make_session
from qcompile.targets import get_target
from tests.support.residue import decomposed_layernorm, paddle_hardswish, tf2onnx_blocks, torch_cast_chain

CASES = {
    "tf2onnx residual blocks": (lambda: tf2onnx_blocks(3, batch="N"), (1, 8, 8, 8)),
    "paddle hardswish": (paddle_hardswish, (1, 3, 8, 8)),
    "decomposed layernorm": (decomposed_layernorm, (1, 6, 16)),
    "pytorch cast chain": (torch_cast_chain, (1, 3, 8, 8)),
}
GONE = {
    "tf2onnx residual blocks": {"Sub", "Mul", "Identity"},
    "paddle hardswish": {"Add", "Clip", "Mul", "Div"},
    "decomposed layernorm": {"ReduceMean", "Sub", "Pow", "Sqrt", "Div"},
    "pytorch cast chain": {"Cast", "Identity"},
}
ONE_OP = {"paddle hardswish": "HardSwish", "decomposed layernorm": "LayerNormalization"}
# what ORT runs for the fused op: HardSwish is an ONNX function, which ORT expands to HardSigmoid(x)·x
FLOAT_ISLAND = {"paddle hardswish": {"HardSwish", "HardSigmoid", "Mul"}}


def _samples(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) * 2 for _ in range(n)]


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("case", list(CASES))
def test_the_residue_goes_and_the_numbers_stay(case):
    build, shape = CASES[case]
    proto = build()
    prepared = prepare(proto, get_target("ort-cpu"))
    after = Counter(n.op_type for n in prepared.model.graph)
    assert not GONE[case] & set(after), after
    if case in ONE_OP:
        assert after[ONE_OP[case]] == 1
    if case == "tf2onnx residual blocks":
        assert after["Transpose"] == 2 and after["Conv"] == 3  # only at the NHWC edges
    for x in _samples(shape, 3):
        np.testing.assert_allclose(_run(prepared.model_proto(), x), _run(proto, x), rtol=1e-4, atol=2e-5)
    assert not canonical_passes(get_target("ort-cpu"))(prepared.model).modified  # a fixed point
    assert prepared.changes and prepared.describe()["nodes_after"] < prepared.describe()["nodes_before"]


def _optimized_graph(model) -> list[onnx.NodeProto]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(SessionSource.of(model), optimized_model_path=path)
        return list(onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("case", ["tf2onnx residual blocks", "paddle hardswish", "pytorch cast chain"])
def test_naive_int8_runs_every_conv_in_integer_with_nothing_between(case):
    build, shape = CASES[case]
    name = "input" if "tf2onnx" in case else "x"
    result = qcompile.compile(build(), calibration=[{name: x} for x in _samples(shape, 16)], measure_latency=False)
    ours = Counter(n.op_type for n in result.model.graph)
    assert ours["Transpose"] == (2 if "tf2onnx" in case else 0)  # the NHWC edges only
    nodes = _optimized_graph(result.model)
    kinds = Counter(n.op_type for n in nodes)
    assert kinds["Conv"] == 0 and kinds["QLinearConv"] == ours["Conv"] >= 2, kinds
    island = FLOAT_ISLAND.get(case, set())
    assert not {"Sub", "Mul", "Div", "Add", "Clip", "Cast", "Relu"} - island & set(kinds), kinds  # no float residue
    produced_by = {o: n for n in nodes for o in n.output}
    for node in nodes:
        if node.op_type != "QLinearConv":
            continue
        source = produced_by.get(node.input[0])  # walk back to the previous integer kernel
        while source is not None and source.op_type not in ("QLinearConv", "QLinearAdd"):
            # Q/DQ around a single fused float op, or a Transpose ORT adds for its NHWC int8 kernels
            ort_layout = source.op_type == "Transpose" and "transpose optimizer" in source.doc_string
            assert ort_layout or source.op_type in {"QuantizeLinear", "DequantizeLinear", *island}, source
            source = produced_by.get(source.input[0])


def test_a_canonical_stage_that_changed_the_numbers_is_caught_and_skipped(monkeypatch, capsys):
    import onnx_ir as ir

    import qcompile.prepare as prep
    from qcompile.cli import main

    class Broken(ir.passes.InPlacePass):  # a bug: doubles the first weight
        def call(self, model):
            w = next(iter(model.graph.initializers.values()))
            w.const_value = ir.tensor(w.const_value.numpy() * 2, name=w.name)
            return ir.passes.PassResult(model, True)

    real = prep.canonical_passes
    monkeypatch.setattr(prep, "canonical_passes", lambda target: ir.passes.Sequential(real(target), Broken()))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.onnx"
        model.write_bytes(paddle_hardswish().SerializeToString())
        np.savez(Path(tmp) / "c.npz", x=np.stack(_samples((1, 3, 8, 8), 6)))
        code = main(["compile", str(model), "--calib", str(Path(tmp) / "c.npz"), "--no-latency", "-o", tmp + "/out"])
        out = capsys.readouterr()
        assert code == 0
        assert "qcompile: warning: the canonical float graph differs from the model by" in out.err
        assert "**canonical stage skipped**" in out.out
        card = (Path(tmp) / "out" / "card.md").read_text()
        assert "HardSwish" not in card and "canonical stage skipped" in card


def test_the_card_says_the_float_graph_was_checked():
    result = qcompile.compile(
        paddle_hardswish(), calibration=[{"x": x} for x in _samples((1, 3, 8, 8), 6)], measure_latency=False
    )
    check = result.card["prepare"]["float_check"]
    assert check["sample"] == 0 and check["max_relative_difference"] < 1e-5
