"""The recognizers' line metrics (tests/support/text_lines.py), which decide the benches' budgets."""

import numpy as np
import pytest

from tests.support import real_data, text_lines
from tests.support.real_models import fetch


def _scores(*lines):
    return np.stack([np.eye(5)[ids] for ids in lines])  # classes: blank, a, b, c, space (4)


def test_greedy_ctc_merges_repeats_drops_blanks_and_edge_spaces():
    assert text_lines.read_line(_scores([4, 1, 1, 0, 1, 2, 4])[0], space=4) == [1, 1, 2]


def test_line_accuracy_and_same_reading():
    read = _scores([1, 0, 2, 2], [3, 3, 0, 1])  # "ab", "ca"
    other = _scores([1, 2, 0, 0], [3, 0, 3, 1])  # "ab", "cca"
    labels = np.array([[1, 2, -1], [3, 1, -1]])
    assert text_lines.line_accuracy({"y": read}, labels) == 1.0
    assert text_lines.line_accuracy({"y": other}, labels) == 0.5
    assert text_lines.same_reading({"y": read}, {"y": other}) == 0.5


@pytest.mark.real_model
def test_a_drawn_line_round_trips_through_the_models_dictionary():
    path = fetch("ppocrv4_rec")
    chars = text_lines.characters(path)
    _, held = real_data.split_samples("ppocrv4_rec", path)
    texts = [str(s["labels"].ravel()[0]) for s in real_data.split(real_data.SAMPLE_BUILDERS["ppocrv4_rec"](path))[1]]
    for sample, text in zip(held[:10], texts[:10], strict=True):
        ids = [int(i) for i in sample["labels"].ravel() if i != text_lines.PAD]
        assert "".join(chars[i] for i in ids) == text.strip()
