"""The text detectors' task metric: intersection over union of the text masks of two models.

A DB text detector (PP-OCR det) outputs a probability map [N, 1, H, W] that a pixel is text;
PaddleOCR's post-processing thresholds it at 0.3.  The IoU of the quantized model's mask with
the float model's, pooled over the samples, is |M_f ∧ M_q| / |M_f ∨ M_q| (1 when both are empty).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["TEXT_THRESHOLD", "mask_iou"]

TEXT_THRESHOLD = 0.3


def mask_iou(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> float:
    """IoU of the text masks of `outputs` and `reference` (a comparison metric,
    `metric(float_outputs, quantized_outputs)`; the first output of each, stacked over samples)."""
    ref = np.asarray(next(iter(reference.values()))) > TEXT_THRESHOLD
    got = np.asarray(next(iter(outputs.values()))) > TEXT_THRESHOLD
    union = np.logical_or(ref, got).sum()
    return float(np.logical_and(ref, got).sum() / union) if union else 1.0
