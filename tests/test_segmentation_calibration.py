"""Segmentation calibration: per-image confidence signals and binned per-pixel ECE."""

from __future__ import annotations

import numpy as np
import pytest

from medfail.analysis.segmentation_calibration import (
    add_pixel_bins,
    image_confidences,
    pixel_bin_table,
    pixel_ece,
)
from medfail.metrics.calibration import ece


def test_image_confidences_on_hand_built_maps() -> None:
    p = np.zeros((10, 10), np.float32)
    p[2:4, 2:4] = 0.9
    c = image_confidences(p)
    assert c["mask_confidence"] == pytest.approx(0.9)
    assert c["mean_max_prob"] == pytest.approx((96 * 1.0 + 4 * 0.9) / 100)
    unsure = image_confidences(np.full((10, 10), 0.55, np.float32))
    assert unsure["mask_entropy"] < c["mask_entropy"]  # near 0.5 = less confident
    empty = image_confidences(np.full((4, 4), 0.2, np.float32))
    assert empty["mask_confidence"] == pytest.approx(0.8)  # confidence that nothing is there


def test_binned_pixel_ece_equals_ece_on_all_pixels() -> None:
    rng = np.random.default_rng(0)
    bins: dict = {}
    ps, ys = [], []
    for _ in range(3):
        p = rng.random((16, 16)).astype(np.float32)
        y = rng.random((16, 16)) < p ** 2  # miscalibrated on purpose
        add_pixel_bins(bins, "lesion", p, y)
        ps.append(p.ravel())
        ys.append(y.ravel())
    table = pixel_bin_table(bins)
    all_px = table[table["region"] == "all"]
    assert all_px["count"].sum() == 3 * 256
    expected = ece(np.concatenate(ys).astype(float), np.concatenate(ps).astype(float), 15)
    assert pixel_ece(all_px) == pytest.approx(expected, abs=1e-9)
    band = table[table["region"] == "band"]
    assert 0 < band["count"].sum() <= 3 * 256


def test_mask_entropy_is_not_clipped_on_saturated_maps() -> None:
    """Old code clipped p to [1e-7, 1 - 1e-7] before the entropy: an image predicted 0 exactly
    and one at float16's smallest step (2**-24 ≈ 6e-8) tied, and neither scored 0 entropy."""
    zero = image_confidences(np.zeros((8, 8), np.float32))
    tiny = image_confidences(np.full((8, 8), np.float16(2.0**-24), np.float32))
    assert zero["mask_entropy"] == 0.0
    p = 2.0**-24
    expected = p * np.log(p) + (1 - p) * np.log1p(-p)  # minus the binary entropy, numpy only
    assert tiny["mask_entropy"] == pytest.approx(expected, rel=1e-12)
    assert zero["mask_entropy"] > tiny["mask_entropy"]
    sure = np.zeros((8, 8), np.float32)
    sure[2:4, 2:4] = 1.0
    assert image_confidences(sure)["mask_entropy"] == 0.0  # p = 1 inside the mask
