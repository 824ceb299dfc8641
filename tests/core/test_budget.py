"""Budgets: metrics by name, from a file, as callables; bounds; every error message."""

import math

import numpy as np
import pytest

from qcompile.budget import Budget, parse_metric
from qcompile.errors import QCompileError
from qcompile.metrics import OutputKind

REF = {"y": np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])}
GOT = {"y": np.array([[1.1, 2.0, 3.0], [3.0, 2.0, 0.9]])}
KINDS = {"y": OutputKind(scores=True)}


def test_floor_on_a_builtin_metric_against_numpy():
    budget = Budget(parse_metric("sqnr:y"), floor=20.0)
    want = 10 * np.log10(np.sum(REF["y"] ** 2) / np.sum((REF["y"] - GOT["y"]) ** 2))
    result = budget.evaluate(REF, GOT, KINDS, None)
    assert result.value == pytest.approx(want) and result.met
    assert not budget.evaluate(REF, GOT, KINDS, None, margin=want - 19).met  # the margin is kept


def test_max_drop_on_accuracy_and_a_user_callable():
    labels = np.array([2, 1])
    result = Budget(parse_metric(None, task=True), max_drop=0.5).evaluate(REF, GOT, KINDS, labels)
    assert (result.float_value, result.value, result.met) == (0.5, 0.5, True)
    mean_error = Budget(parse_metric(lambda f, q: -float(np.mean(np.abs(f["y"] - q["y"])))), floor=-0.1)
    assert mean_error.evaluate(REF, GOT, KINDS, None).value == pytest.approx(-0.2 / 6)


def test_a_bound_met_exactly_is_met_despite_rounding():
    share = lambda outputs, labels: float(np.mean(np.ravel(outputs["y"]) == np.ravel(labels)))  # noqa: E731
    labels = np.arange(50)
    ref, got = {"y": labels.copy()}, {"y": labels.copy()}
    got["y"][0] = -1  # 49 of 50 right: 1 - 0.98 is 0.020000000000000018 in floating point
    assert Budget(parse_metric(share, task=True), max_drop=0.02).evaluate(ref, got, {}, labels).met
    got["y"][1] = -1
    assert not Budget(parse_metric(share, task=True), max_drop=0.02).evaluate(ref, got, {}, labels).met
    assert Budget(parse_metric(lambda f, q: 0.3), floor=0.1 * 3).evaluate(ref, got, {}, None).met  # 0.30000000000000004


def test_a_metric_from_a_file(tmp_path):
    (tmp_path / "m.py").write_text(
        "import numpy as np\ndef close(f, q):\n    return -float(np.abs(f['y'] - q['y']).max())\n"
    )
    budget = Budget(parse_metric(f"{tmp_path / 'm.py'}:close"), floor=-0.05)
    result = budget.evaluate(REF, GOT, KINDS, None)
    assert result.value == pytest.approx(-0.1) and not result.met


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: parse_metric("psnr"), "unknown metric 'psnr'; known: fidelity, sqnr, cosine, top1, max-rel-error"),
        (lambda p: parse_metric("sqnr", task=True), "--max-drop needs a task metric: 'accuracy' or file.py:function"),
        (lambda p: parse_metric(f"{p}/none.py:f"), "metric file .*none.py does not exist"),
        (lambda p: parse_metric(f"{p}/m.py:nope"), "metric file .*m.py has no function 'nope'"),
        (lambda p: parse_metric(f"{p}/bad.py:f"), "metric file .*bad.py failed to load: ZeroDivisionError"),
        (lambda p: parse_metric(f"{p}/m.py:x:f"), "metric file .*m.py:x is not a Python module"),
        (lambda p: Budget(parse_metric("sqnr"), floor=1, max_drop=1), "either a floor or a max drop, not both"),
        (lambda p: Budget(parse_metric("sqnr"), max_drop=1), "--max-drop needs a task metric"),
        (lambda p: Budget(parse_metric(None, task=True), floor=1), "--floor needs a comparison metric"),
        (
            lambda p: Budget(parse_metric("sqnr:z"), floor=1).evaluate(REF, GOT, KINDS, None),
            "metric 'sqnr:z' names output 'z'; the model's outputs: y",
        ),
        (
            lambda p: Budget(parse_metric(None, task=True), max_drop=1).evaluate(REF, GOT, KINDS, None),
            "metric 'accuracy' needs labels in the evaluation data",
        ),
        (
            lambda p: Budget(parse_metric(lambda f, q: "good"), floor=1).evaluate(REF, GOT, KINDS, None),
            "metric '<lambda>' returned 'good'; it must return a number",
        ),
        (
            lambda p: Budget(parse_metric(lambda f, q: f["nope"]), floor=1).evaluate(REF, GOT, KINDS, None),
            "metric '<lambda>' raised KeyError",
        ),
        (
            lambda p: Budget(parse_metric(None, task=True), max_drop=1).evaluate(REF, GOT, {}, np.array([0, 1])),
            "metric 'accuracy' needs an output of class scores; the model has none",
        ),
    ],
)
def test_error_messages(tmp_path, make, message):
    (tmp_path / "m.py").write_text("def f(a, b):\n    return 1.0\n")
    (tmp_path / "bad.py").write_text("1 / 0\n")
    (tmp_path / "m.py:x").write_text("def f(a, b):\n    return 1.0\n")
    with pytest.raises(QCompileError, match=message):
        make(tmp_path)


def test_a_metric_of_nan_outputs_is_as_bad_as_can_be():
    result = Budget(parse_metric(lambda f, q: float("nan")), floor=-1e9).evaluate(REF, GOT, KINDS, None)
    assert result.value == -math.inf and not result.met


def test_the_default_margin_never_asks_for_more_than_perfect():
    from qcompile.budget import Budget, parse_metric
    from qcompile.search import default_margin

    def margin(metric, floor=None, max_drop=None):
        return default_margin(Budget(parse_metric(metric, task=max_drop is not None), floor=floor, max_drop=max_drop))

    assert margin("fidelity", 20) == 1.0 and margin("sqnr:y", 30) == 1.0
    # 1 dB less noise, as a share of the distance to a cosine (or agreement) of 1
    assert abs(margin("cosine", 0.99) - 0.01 * (1 - 10**-0.1)) < 1e-12
    assert 0.99 + margin("cosine", 0.99) < 1.0 and 0.9 + margin("top1", 0.9) < 1.0
    assert margin("cosine", 1.0) == 0.0
    assert abs(margin("max-rel-error", -0.05) - 0.05 * (1 - 10**-0.1)) < 1e-12
    assert margin("accuracy", max_drop=0.01) == 0.005


def test_labels_are_stacked_as_the_outputs_are():
    from qcompile.budget import stacked_labels

    classes = [{"labels": np.array(c)} for c in (3, 1, 4)]
    assert stacked_labels(classes).tolist() == [3, 1, 4]
    lines = [{"labels": np.array([[5, 2, -1]])}, {"labels": np.array([[7, -1, -1]])}]
    assert stacked_labels(lines).shape == (2, 3)  # [1, L] each → [N, L], as outputs are
    assert stacked_labels([{"labels": x["labels"][0]} for x in lines]).shape == (2, 3)  # [L] each: stacked
    ragged = [{"labels": np.array([[5, 2]])}, {"labels": np.array([[7]])}]
    assert [x.shape for x in stacked_labels(ragged)] == [(1, 2), (1, 1)]
    assert stacked_labels([{"labels": np.array(1)}, {}]) is None


def test_a_task_budget_on_per_position_labels(rng):
    """Sequence scores [1, T, C] with a label per position ([1, T] per sample): the user's task metric
    reads them as [N, T]; the card's per-sample top-1 accuracy does not apply (it crashed on them)."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    import qcompile

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 12])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    samples = []
    for _ in range(30):
        x = rng.normal(size=(1, 6, 12)).astype(np.float32)
        samples.append({"x": x, "labels": x.argmax(-1)})
    seen = []

    def positions_right(outputs, labels):
        seen.append(np.shape(labels))
        return float(np.mean(outputs["y"].argmax(-1) == labels))

    result = qcompile.compile(model, calibration=samples[:20], evaluation=samples[20:], metric=positions_right,
                              max_drop=0.05, measure_latency=False)  # fmt: skip
    assert (10, 6) in seen and result.card["fidelity"].get("float_accuracy") is None
    budget = result.card["budget"]
    assert budget["float_value"] == 1.0 and budget["met"] == (budget["value"] >= 0.95)


def _share_right(ref, got):
    """The share of samples whose quantized output keeps the float argmax: a mean of 0/1 scores."""
    return float(np.mean(np.argmax(ref["y"], axis=-1) == np.argmax(got["y"], axis=-1)))


def test_the_jackknife_error_of_a_share_is_its_binomial_standard_error(rng):
    from qcompile.budget import jackknife_error

    n = 20
    ref = {"y": [rng.normal(size=(1, 5)).astype(np.float32) for _ in range(n)]}
    got = {"y": [r + rng.normal(scale=0.8, size=r.shape).astype(np.float32) for r in ref["y"]]}
    right = np.array([np.argmax(r) == np.argmax(g) for r, g in zip(ref["y"], got["y"], strict=True)])
    p = right.mean()
    assert 0 < p < 1
    budget = Budget(parse_metric(_share_right), floor=0.5)
    expected = math.sqrt(p * (1 - p) / (n - 1))  # a mean's jackknife error: s/√n, s the sample deviation
    assert jackknife_error(budget, ref, got, {"y": OutputKind()}, None) == pytest.approx(expected, rel=1e-9)
    assert jackknife_error(budget, ref, ref, {"y": OutputKind()}, None) == 0.0  # every sample right: no spread
    few = {"y": ref["y"][:2]}
    assert jackknife_error(budget, few, {"y": got["y"][:2]}, {"y": OutputKind()}, None) == 0.0


def test_the_jackknife_error_of_a_task_budget_is_that_of_its_drop(rng):
    from qcompile.budget import jackknife_error

    n = 12
    labels = rng.integers(0, 4, size=n)
    ref = {"y": [np.eye(4, dtype=np.float32)[[c]] for c in labels]}  # float: every sample right
    got = {"y": [np.eye(4, dtype=np.float32)[[c if i % 3 else (c + 1) % 4]] for i, c in enumerate(labels)]}
    budget = Budget(parse_metric("accuracy", task=True), max_drop=0.5)
    wrong = np.array([0.0 if i % 3 else 1.0 for i in range(n)])  # the drop is the share wrong
    expected = wrong.std(ddof=1) / math.sqrt(n)
    kinds = {"y": OutputKind(scores=True)}
    assert jackknife_error(budget, ref, got, kinds, labels) == pytest.approx(expected, rel=1e-9)


def test_the_jackknife_over_blocks_is_the_spread_of_the_block_means(rng):
    """Correlated steps counted once: over g equal blocks, a mean's block jackknife error is the
    deviation of the block means over √g, here larger than the sample-by-sample figure."""
    from qcompile.budget import jackknife_error

    g, length = 6, 8
    right = np.repeat(rng.random(g) < 0.5, length)  # each block all right or all wrong
    right[:length], right[length : 2 * length] = True, False  # both kinds, whatever the draw
    ref = {"y": [np.eye(3, dtype=np.float32)[[0]] for _ in right]}
    got = {"y": [np.eye(3, dtype=np.float32)[[0 if r else 1]] for r in right]}
    budget = Budget(parse_metric(_share_right), floor=0.5)
    blocks = [(j * length, (j + 1) * length) for j in range(g)]
    block_means = right.reshape(g, length).mean(axis=1)
    expected = block_means.std(ddof=1) / math.sqrt(g)
    kinds = {"y": OutputKind()}
    assert jackknife_error(budget, ref, got, kinds, None, blocks) == pytest.approx(expected, rel=1e-9)
    assert jackknife_error(budget, ref, got, kinds, None) < expected / 2  # as if independent: far too small
    assert jackknife_error(budget, ref, got, kinds, None, blocks[:2]) == 0.0  # fewer than 3 groups
