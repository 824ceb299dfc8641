"""Metrics against independent numpy figures, and the output kinds read off small graphs."""

import numpy as np
import pytest

from qcompile.errors import QCompileError
from qcompile.metrics import BUILTIN_METRICS, OutputKind, channel_sqnr_db, fidelity_db, output_figures, output_kinds
from tests.helpers import parse


def test_kinds_tell_class_scores_from_boxes_masks_and_hidden_states():
    zeros = lambda n: ", ".join(["0"] * n)  # noqa: E731
    model = parse(f"""<ir_version: 8, opset_import: ["": 17]>
g (float[1, 8] x, float[1, 6, 8] s, float[1, 1, 8, 8] img)
  => (float[1, 4] probs, float[1, 4] box, float[1, 12] logits, float[1, 6, 12] seq, float[1, 1, 8, 8] mask)
  <float[8, 4] w4 = {{{zeros(32)}}}, float[8, 12] w12 = {{{zeros(96)}}}> {{
    a = MatMul(x, w4)
    probs = Softmax(a)
    box = MatMul(x, w4)
    logits = MatMul(x, w12)
    l3 = MatMul(s, w12)
    seq = Softmax(l3)
    mask = Sigmoid(img)
}}""")
    kinds = output_kinds(model)
    assert kinds["probs"] == OutputKind(probabilities=True, scores=True)
    assert kinds["box"] == OutputKind()  # a 4-value regression: no argmax
    assert kinds["logits"] == OutputKind(scores=True) and kinds["seq"] == OutputKind(probabilities=True, scores=True)
    assert kinds["mask"] == OutputKind(probabilities=True, scores=False)


def test_worst_channel_sees_what_the_whole_tensor_hides(rng):
    boxes = rng.uniform(0, 320, size=(50, 4))
    probs = rng.uniform(0, 1, size=(50, 2))
    ref = np.concatenate([boxes, probs], axis=1)[:, None, :]
    got = ref.copy()
    got[..., 4:] = 0.5  # the probabilities lost entirely
    whole = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    probs_only = 10 * np.log10(np.sum(probs**2, axis=0) / np.sum((probs - 0.5) ** 2, axis=0)).min()
    assert whole > 25 and channel_sqnr_db(ref, got) == pytest.approx(probs_only)


def test_probabilities_are_compared_as_logs(rng):
    p = rng.dirichlet(np.full(10, 0.2), size=40)
    q = np.where(p < 1 / 256, 0.0, p)  # what uint8 does to small probabilities
    kind = OutputKind(probabilities=True, scores=True)
    logs = np.log(np.clip(p, 1e-6, None)), np.log(np.clip(q, 1e-6, None))
    want = min(
        10 * np.log10(np.sum(logs[0][:, c] ** 2) / max(np.sum((logs[0][:, c] - logs[1][:, c]) ** 2), 1e-300))
        for c in range(10)
    )
    assert channel_sqnr_db(p, q, kind) == pytest.approx(want)
    assert channel_sqnr_db(p, q, kind) < channel_sqnr_db(p, q) - 10


def test_sequence_agreement_is_per_position(rng):
    ref = rng.normal(size=(3, 20, 12))  # three samples of [1, T=20, C=12], concatenated
    got = ref.copy()
    got[0, :5] = -ref[0, :5]  # five positions of one sample disagree
    figures = output_figures("seq", ref, got, OutputKind(scores=True))
    assert figures.top1_agreement == pytest.approx(1 - 5 / 60)


def test_builtin_metrics_and_dynamic_shapes(rng):
    ref = {"a": [rng.normal(size=(1, 5, 8)), rng.normal(size=(1, 7, 8))], "b": [np.ones((1, 3)), np.ones((1, 3))]}
    got = {"a": [x + 0.01 for x in ref["a"]], "b": [np.ones((1, 3)), np.ones((1, 3)) * 1.1]}
    kinds = {}
    assert BUILTIN_METRICS["fidelity"](ref, got, kinds) == pytest.approx(fidelity_db(ref, got, kinds))
    assert BUILTIN_METRICS["fidelity"](ref, got, kinds, output="a") > BUILTIN_METRICS["fidelity"](ref, got, kinds)
    assert BUILTIN_METRICS["max-rel-error"](ref, got, kinds, output="b") == pytest.approx(-0.1 / 1.0)
    with pytest.raises(QCompileError, match="'top1_agreement' has nothing to measure: no output of class scores"):
        BUILTIN_METRICS["top1"](ref, got, kinds)
    ints = {"n": [np.ones((1, 3), np.int64)]}
    with pytest.raises(QCompileError, match="'fidelity' has nothing to measure: no float output"):
        BUILTIN_METRICS["fidelity"](ints, ints, kinds)


def test_image_maps_take_their_channels_on_axis_1(rng):
    ref = rng.uniform(0, 1, size=(2, 3, 8, 8))
    got = ref.copy()
    got[:, 2] += 0.1  # one channel of the map off
    want = 10 * np.log10(np.sum(ref[:, 2] ** 2) / np.sum(0.1**2 * np.ones((2, 8, 8))))
    assert channel_sqnr_db(ref, got) == pytest.approx(want)
