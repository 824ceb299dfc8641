"""Samples the float model is undecided on (qcompile.undecided), and the search's share of them."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.card import render_markdown
from qcompile.metrics import output_kinds
from qcompile.undecided import float_undecided, top_margin
from tests.helpers import parse


def _scores_model() -> ir.Model:
    """x [1, 16] → MatMul → Softmax [1, 10]; the logits are the first 10 inputs."""
    w = np.zeros((16, 10), np.float32)
    w[:10] = np.eye(10)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"])],
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_top_margin_of_probabilities_and_of_logits():
    p = np.array([0.6, 0.3, 0.1])
    assert top_margin(p, probabilities=True) == pytest.approx(0.3)
    assert top_margin(np.log(p), probabilities=False) == pytest.approx(0.3)  # softmax(log p) = p
    sequence = np.array([[[0.9, 0.05, 0.05], [0.45, 0.4, 0.15]]])  # [1, T, C]: the weakest position
    assert top_margin(sequence, probabilities=True) == pytest.approx(0.05)
    assert top_margin(np.array([0.7]), probabilities=True) == 1.0  # one value: no runner-up


def _sample(rng, undecided):
    x = rng.normal(scale=0.1, size=(1, 16)).astype(np.float32)
    x[0, 2] += 8.0
    if undecided:
        x[0, 5] += 7.9  # two classes within 0.1 logit of each other
    return {"x": x}


def test_the_float_model_says_which_samples_it_is_undecided_on(rng):
    model = _scores_model()
    undecided = float_undecided(model, output_kinds(model))
    assert undecided is not None
    assert not undecided(_sample(rng, False)) and undecided(_sample(rng, True))
    relu = parse('<ir_version: 8, opset_import: ["" : 17]> g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }')
    assert float_undecided(relu, output_kinds(relu)) is None


def test_the_search_takes_its_share_of_undecided_samples_and_the_card_says_so(rng):
    flags = [i % 10 == 3 for i in range(40)]  # 4 of 40
    calibration = [_sample(rng, f) for f in flags]
    evaluation = [_sample(rng, i % 2 == 0) for i in range(6)]
    result = qcompile.compile(_scores_model(), calibration=calibration, evaluation=evaluation, policy="hybrid",
                              measure_latency=False)  # fmt: skip
    assert result.card["search"]["undecided"] == {"stream": 4, "of": 40, "search": 1}
    assert "undecided on (top class ahead by less than 0.5): 1 of 8, as the calibration stream had 4 of 40" in (
        render_markdown(result.card)
    )
    result.card["search"]["undecided"].update(stream=0, search=0)  # a stream without any: no line
    assert "undecided on" not in render_markdown(result.card)
