"""Segmentation calibration: per-image confidence signals and binned per-pixel ECE."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import brier_score_loss

from medfail import rundir
from medfail.analysis import segmentation_calibration as segcal
from medfail.analysis.segmentation_calibration import (
    BIN_COLUMNS,
    add_pixel_bins,
    band_mask,
    image_confidences,
    pixel_bin_table,
    pixel_brier,
    pixel_ece,
    segmentation_calibration_table,
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


def smooth_case(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A float16-stored probability map (as the engine stores it) and a GT with a few blobs."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    field /= field.std()
    truth = field > 1.0
    p = 1 / (1 + np.exp(-3 * (field - 1.0) - 0.8 * rng.normal(size=shape)))
    return p.astype(np.float16).astype(np.float32), truth


def accumulate(cases: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    bins: dict = {}
    for p, truth in cases:
        add_pixel_bins(bins, "organ", p, truth)
    return pixel_bin_table(bins)


@pytest.mark.parametrize("shape", [(40, 36), (20, 18, 12)], ids=["2d", "3d"])
def test_pixel_brier_equals_sklearn_on_flattened_pixels(shape) -> None:
    rng = np.random.default_rng(1)
    cases = [smooth_case(rng, shape) for _ in range(3)]
    table = accumulate(cases)
    assert list(table.columns) == ["target", "region", "bin", *BIN_COLUMNS]
    ps = np.concatenate([p.ravel() for p, _ in cases]).astype(np.float64)
    ys = np.concatenate([t.ravel() for _, t in cases])
    bands = [band_mask(t, p > 0.5) for p, t in cases]
    pb = np.concatenate([p[b] for (p, _), b in zip(cases, bands, strict=True)]).astype(float)
    yb = np.concatenate([t[b] for (_, t), b in zip(cases, bands, strict=True)])
    all_px, band = table[table["region"] == "all"], table[table["region"] == "band"]
    assert pixel_brier(all_px) == pytest.approx(brier_score_loss(ys, ps), rel=1e-10)
    assert pixel_brier(band) == pytest.approx(brier_score_loss(yb, pb), rel=1e-10)
    assert pixel_ece(all_px) == pytest.approx(ece(ys.astype(float), ps, 15), abs=1e-12)
    assert 0 < len(pb) < len(ps) and pixel_brier(band) > pixel_brier(all_px) > 0
    # the per-bin sums themselves, against numpy
    b = np.minimum(np.floor(ps * 15).astype(int), 14)
    np.testing.assert_allclose(all_px["sum_prob_sq"], np.bincount(b, ps ** 2, 15), rtol=1e-12)
    np.testing.assert_allclose(all_px["sum_prob_label"], np.bincount(b, ps * ys, 15),
                               rtol=1e-12)


def test_pixel_bins_stream_in_chunks_with_equal_sums(monkeypatch) -> None:
    """Chunking inside a volume (bounded temporaries) gives the sums of one pass."""
    p, truth = smooth_case(np.random.default_rng(2), (24, 20, 16))
    whole = accumulate([(p, truth)])
    monkeypatch.setattr(segcal, "_CHUNK", 1000)  # 7,680 voxels in 8 chunks, last one partial
    chunked = accumulate([(p, truth)])
    np.testing.assert_allclose(chunked[list(BIN_COLUMNS)], whole[list(BIN_COLUMNS)], rtol=1e-12)


def test_pixel_brier_hand_computed_and_empty() -> None:
    p = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    truth = np.array([[0, 1], [1, 1]], bool)  # errors² 0, 0.25, 0, 0.64
    table = accumulate([(p, truth)])
    assert pixel_brier(table[table["region"] == "all"]) == pytest.approx(0.89 / 4)
    assert np.isnan(pixel_brier(table.iloc[:0]))
    old = table[table["region"] == "all"].drop(columns=["sum_prob_sq", "sum_prob_label"])
    assert np.isnan(pixel_brier(old))  # a pixel_bins table of an older run


def test_band_mask_3d_is_euclidean_in_voxels_and_cropping_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    shape = (18, 16, 14)
    truth = np.zeros(shape, bool)
    truth[0:3, 5:8, 2:4] = True  # touches the volume border
    pred = np.zeros(shape, bool)
    pred[12, 10, 9] = True
    band = band_mask(truth, pred)
    fg = truth | pred
    np.testing.assert_array_equal(band, ndimage.distance_transform_edt(~fg) <= 5)  # uncropped
    voxels = np.argwhere(np.ones(shape, bool))
    brute = cdist(voxels, np.argwhere(fg)).min(axis=1).reshape(shape) <= 5
    np.testing.assert_array_equal(band, brute)
    # voxels, whatever the spacing: 5 slices away along Z is in, 6 is out
    assert band[12, 10, 4] and not band[12, 10, 3]
    for band_px in (0.5, 1.0, 2.5, 7.0):
        np.testing.assert_array_equal(band_mask(truth, pred, band_px),
                                      ndimage.distance_transform_edt(~fg) <= band_px)
    assert not band_mask(np.zeros(shape, bool), np.zeros(shape, bool)).any()
    blobs = rng.random(shape) < 0.01
    np.testing.assert_array_equal(band_mask(blobs, pred),
                                  ndimage.distance_transform_edt(~(blobs | pred)) <= 5)


def test_add_pixel_bins_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"probability map \(4, 4, 4\) and mask \(4, 4\)"):
        add_pixel_bins({}, "organ", np.zeros((4, 4, 4), np.float32), np.zeros((4, 4), bool))


def test_calibration_table_has_pixel_brier_next_to_pixel_ece(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    cases = [smooth_case(rng, (12, 12, 8)) for _ in range(2)]
    table = accumulate(cases)
    rundir.predictions_dir(tmp_path).mkdir(parents=True)
    table.to_parquet(rundir.condition_file(tmp_path, "clean", ".pixel_bins.parquet"))
    table.drop(columns=["sum_prob_sq", "sum_prob_label"]).to_parquet(
        rundir.condition_file(tmp_path, "old", ".pixel_bins.parquet"))
    conf = pd.DataFrame([{"id": f"v{i}", "target": "organ", "signal": "mean_max_prob",
                          "value": float(np.maximum(p, 1 - p).mean())}
                         for i, (p, _) in enumerate(cases)])
    per_sample = pd.DataFrame([{"id": f"v{i}", "condition": c, "target": "organ",
                                "metric": "dice", "value": 0.5 + 0.1 * i}
                               for i in range(2) for c in ("clean", "old")])
    for c in ("clean", "old"):
        conf.to_parquet(rundir.condition_file(tmp_path, c, ".confidence.parquet"))
    conds = [SimpleNamespace(name=c, test=c, family="none", severity=0) for c in ("clean", "old")]
    out = segmentation_calibration_table(tmp_path, conds, per_sample)
    pix = out[out["method"] == "pixel"].set_index(["condition", "metric"])["value"]
    ps = np.concatenate([p.ravel() for p, _ in cases]).astype(np.float64)
    ys = np.concatenate([t.ravel() for _, t in cases])
    assert pix[("clean", "pixel_brier")] == pytest.approx(brier_score_loss(ys, ps), rel=1e-10)
    assert set(pix.loc["clean"].index) == {"pixel_ece", "pixel_ece_band", "pixel_brier",
                                           "pixel_brier_band"}
    assert set(pix.loc["old"].index) == {"pixel_ece", "pixel_ece_band"}  # old run: no Brier
    assert pix[("old", "pixel_ece")] == pix[("clean", "pixel_ece")]
