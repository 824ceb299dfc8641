"""Text-line labels for the CTC recognizers, and their metrics: exact-line accuracy (a task metric
of outputs and labels) and the share of lines read as float reads them (a comparison metric).

A PaddleOCR recognizer's output [1, T, C] scores, per position, class 0 (CTC blank), the
characters of its dictionary (the model's `character` metadata, one per line) and a space.  A
line's label is the indices of its characters, padded with -1 to `LABEL_LENGTH` ([1, L], so
labels stack to [N, L] as outputs do).  Greedy CTC reads a line as the argmax per position,
repeats merged, blanks dropped; it is right when that equals the label (spaces at either end
dropped from both).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np
import onnx

__all__ = ["LABEL_LENGTH", "characters", "line_label", "read_line", "line_accuracy", "same_reading"]

LABEL_LENGTH = 40
PAD, UNKNOWN = -1, -2


@cache
def characters(path: Path) -> tuple[str, ...]:
    """The recognizer's classes: blank (""), its dictionary, space."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ("", *props["character"].splitlines(), " ")


@cache
def _index(path: Path) -> dict[str, int]:
    return {c: i for i, c in enumerate(characters(path)) if c}


def line_label(path: Path, text: str) -> np.ndarray:
    """`text` as class indices [1, LABEL_LENGTH] (a character outside the dictionary: UNKNOWN)."""
    index = _index(path)
    ids = [index.get(c, UNKNOWN) for c in text.strip()][:LABEL_LENGTH]
    return np.array([ids + [PAD] * (LABEL_LENGTH - len(ids))], np.int64)


def read_line(scores: np.ndarray, space: int) -> list[int]:
    """Greedy CTC of one line's scores [T, C] (or [1, T, C]), spaces at the ends dropped."""
    ids = np.asarray(scores).reshape(-1, np.shape(scores)[-1]).argmax(-1)
    read = [int(i) for j, i in enumerate(ids) if i != 0 and (j == 0 or i != ids[j - 1])]
    while read and read[-1] == space:
        read.pop()
    while read and read[0] == space:
        read.pop(0)
    return read


def line_accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    """Share of lines read exactly (the task metric, `metric(outputs, labels)`): `outputs` holds one
    output of scores [N, T, C]; `labels` [N, L].  The space is the last class."""
    (scores,) = outputs.values()
    scores, labels = np.asarray(scores), np.asarray(labels).reshape(len(scores), -1)
    space = scores.shape[-1] - 1
    return float(
        np.mean(
            [read_line(s, space) == [int(i) for i in row if i != PAD] for s, row in zip(scores, labels, strict=True)]
        )
    )


def same_reading(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> float:
    """Share of lines the quantized model reads exactly as the float one (a comparison metric,
    `metric(float_outputs, quantized_outputs)`), greedy CTC as above."""
    (ref,), (got,) = reference.values(), outputs.values()
    space = np.shape(ref)[-1] - 1
    return float(np.mean([read_line(r, space) == read_line(g, space) for r, g in zip(ref, got, strict=True)]))
