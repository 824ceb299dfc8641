"""The detectors' mask IoU (tests/support/text_masks.py), which decides their benches' budgets."""

import numpy as np

from tests.support import text_masks


def test_mask_iou_pools_pixels_over_samples_at_the_text_threshold():
    ref = np.zeros((2, 1, 4, 4), np.float32)
    ref[0, 0, :2] = 0.9  # 8 text pixels in the first sample
    got = ref.copy()
    got[0, 0, 1] = 0.2  # 4 of them lost
    got[1, 0, 0, :2] = 0.31  # 2 gained in the second
    assert text_masks.mask_iou({"maps": ref}, {"maps": got}) == 4 / 10


def test_mask_iou_of_two_empty_masks_is_one():
    empty = {"maps": np.full((1, 1, 2, 2), 0.3, np.float32)}  # at the threshold is not text
    assert text_masks.mask_iou(empty, empty) == 1.0
