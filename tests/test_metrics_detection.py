"""Per-lesion detection metrics on hand-built masks, vs a brute-force skimage reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from medfail.metrics.detection import (
    LesionRecord,
    lesion_counts,
    lesion_f1,
    lesion_precision,
    lesion_sensitivity,
    lesion_table,
    pooled_lesion_f1,
)
from medfail.metrics.segmentation import dice


def empty(n: int = 1, shape: tuple[int, ...] = (20, 20)) -> np.ndarray:
    return np.zeros((n, *shape), bool)


def brute_counts(t: np.ndarray, p: np.ndarray, thr: float) -> tuple[int, int, int]:
    """Reference for one image: skimage labels (full connectivity), IoU per pair in a loop."""
    lt = sk_label(t, connectivity=t.ndim)
    lp = sk_label(p, connectivity=p.ndim)
    nt, np_ = int(lt.max()), int(lp.max())
    hit = np.zeros((nt, np_), bool)
    for i in range(1, nt + 1):
        g = lt == i
        for j in range(1, np_ + 1):
            q = lp == j
            hit[i - 1, j - 1] = (g & q).sum() / (g | q).sum() >= thr
    tp = int(hit.any(axis=1).sum())
    return tp, nt - tp, np_ - int(hit.any(axis=0).sum())


# ---------------------------------------------------------------- hand-built cases


def test_two_lesions_one_missed():
    t, p = empty(), empty()
    t[0, 2:6, 2:6] = True  # 16 px, detected exactly
    t[0, 12:15, 12:15] = True  # 9 px, missed
    p[0, 2:6, 2:6] = True
    c = lesion_counts(t, p)
    assert c.shape == (1, 3) and c.dtype == np.int64
    np.testing.assert_array_equal(c, [[1, 1, 0]])
    assert lesion_sensitivity(c)[0] == 0.5
    assert lesion_precision(c)[0] == 1.0
    assert lesion_f1(c)[0] == pytest.approx(2 / 3)
    assert lesion_table(t, p) == [LesionRecord(0, 16, True), LesionRecord(0, 9, False)]


def test_merged_prediction_counts_each_lesion_against_the_merge():
    t, p = empty(2), empty(2)
    # image 0: two equal lesions (16 px each) joined by one predicted component (40 px)
    t[0, 2:6, 2:6] = True
    t[0, 2:6, 8:12] = True
    p[0, 2:6, 2:12] = True  # IoU with each lesion = 16 / 40 = 0.4
    # image 1: a large (64 px) and a small (4 px) lesion merged into one component (96 px)
    t[1, 2:10, 2:10] = True
    t[1, 2:4, 12:14] = True
    p[1, 2:10, 2:14] = True  # IoU: large 64 / 96 = 0.67, small 4 / 96 = 0.04
    np.testing.assert_array_equal(lesion_counts(t, p, 0.1), [[2, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(lesion_counts(t, p, 0.4), [[2, 0, 0], [1, 1, 0]])
    # above 0.4 the merge matches neither equal lesion, and is itself a false positive
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [[0, 2, 1], [1, 1, 0]])
    np.testing.assert_array_equal(lesion_counts(t, p, 0.7), [[0, 2, 1], [0, 2, 1]])
    for thr in (0.1, 0.4, 0.5, 0.7):
        ref = [brute_counts(t[i], p[i], thr) for i in range(2)]
        np.testing.assert_array_equal(lesion_counts(t, p, thr), ref)


def test_split_prediction():
    t, p = empty(), empty()
    t[0, 2:6, 2:12] = True  # 40 px
    p[0, 2:6, 2:6] = True  # piece 1: IoU 16 / 40 = 0.4
    p[0, 2:6, 9:12] = True  # piece 2: IoU 12 / 40 = 0.3
    np.testing.assert_array_equal(lesion_counts(t, p, 0.1), [[1, 0, 0]])  # both pieces match
    np.testing.assert_array_equal(lesion_counts(t, p, 0.35), [[1, 0, 1]])  # piece 2 is an FP
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [[0, 1, 2]])


def test_false_positive_blob():
    t, p = empty(), empty()
    t[0, 2:6, 2:6] = True
    p[0, 3:6, 2:6] = True  # IoU 12 / 16
    p[0, 14:17, 14:18] = True  # far blob
    c = lesion_counts(t, p)
    np.testing.assert_array_equal(c, [[1, 0, 1]])
    assert lesion_sensitivity(c)[0] == 1.0
    assert lesion_precision(c)[0] == 0.5
    assert lesion_f1(c)[0] == pytest.approx(2 / 3)


def test_empty_cases():
    t, p = empty(3), empty(3)
    t[1, 5:8, 5:8] = True  # GT only
    p[2, 5:8, 5:8] = True  # prediction only
    c = lesion_counts(t, p)
    np.testing.assert_array_equal(c, [[0, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(lesion_f1(c), [1.0, 0.0, 0.0])
    sens, prec = lesion_sensitivity(c), lesion_precision(c)
    assert np.isnan(sens[0]) and sens[1] == 0.0 and np.isnan(sens[2])  # no GT -> nan
    assert np.isnan(prec[0]) and np.isnan(prec[1]) and prec[2] == 0.0  # no pred -> nan
    assert lesion_table(t, p) == [LesionRecord(1, 9, False)]
    assert lesion_table(t[:1], p[:1]) == []
    assert pooled_lesion_f1(c[:1]) == 1.0  # nothing anywhere
    assert pooled_lesion_f1(np.zeros((0, 3), int)) == 1.0  # no images


def test_connectivity_is_full_8_in_2d():
    t, p = empty(), empty()
    t[0, 3, 3] = t[0, 4, 4] = True  # diagonal contact: one lesion of 2 px
    p[0, 3, 3] = True
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [[1, 0, 0]])
    assert lesion_table(t, p) == [LesionRecord(0, 2, True)]
    np.testing.assert_array_equal(lesion_counts(t, p, 0.6), [[0, 1, 1]])


def test_3d_case_and_26_connectivity():
    t, p = empty(2, (10, 12, 12)), empty(2, (10, 12, 12))
    t[0, 1:4, 1:4, 1:4] = True  # 27 voxels, detected with IoU 18/27
    t[0, 6:8, 8:10, 8:10] = True  # 8 voxels, missed
    p[0, 1:3, 1:4, 1:4] = True
    p[0, 7:9, 1:3, 1:3] = True  # FP
    t[1, 2, 2, 2] = t[1, 3, 3, 3] = True  # corner contact only: one lesion of 2 voxels
    p[1, 3, 3, 3] = True
    c = lesion_counts(t, p)
    np.testing.assert_array_equal(c, [[1, 1, 1], [1, 0, 0]])
    assert lesion_table(t, p) == [
        LesionRecord(0, 27, True),
        LesionRecord(0, 8, False),
        LesionRecord(1, 2, True),
    ]
    np.testing.assert_allclose(lesion_f1(c), [0.5, 1.0])
    assert pooled_lesion_f1(c) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_3d_connectivity_is_monais_default_full_26_not_scipys_face_6():
    """Edge contact (18-neighbours) and corner contact (26) join a lesion, as MONAI's
    connected components with its default ``connectivity=None`` (full); scipy's
    ``ndimage.label`` default (face, 6) would split them."""
    from monai.transforms.utils import get_largest_connected_component_mask

    t = empty(1, (10, 10, 10))
    t[0, 1:4, 1:4, 1:4] = True  # 27 voxels
    t[0, 4, 4, 2] = True  # touches the cube along an edge only
    t[0, 5, 5, 3] = True  # touches that voxel at a corner only
    assert lesion_table(t, t) == [LesionRecord(0, 29, True)]
    assert get_largest_connected_component_mask(t[0]).sum() == 29  # MONAI default: one
    assert ndimage.label(t[0])[1] == 3  # scipy default (face): three components
    p = empty(1, (10, 10, 10))
    p[0, 1:4, 1:4, 1:4] = True  # the cube alone: one lesion found (face connectivity: 1 of 3)
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [[1, 0, 0]])
    p[0, 5, 5, 3] = True  # a separate component now (2 voxels from the cube): IoU 1/29, an FP
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [[1, 0, 1]])
    np.testing.assert_array_equal(lesion_counts(t, p, 0.5), [brute_counts(t[0], p[0], 0.5)])


def test_large_hit_small_missed_metrics_reloaded_pitfall():
    t, p = empty(1, (40, 40)), empty(1, (40, 40))
    t[0, 5:25, 5:25] = True  # 400 px, hit exactly
    t[0, 32:34, 32:34] = True  # 4 px, missed
    p[0, 5:25, 5:25] = True
    assert dice(t, p)[0] == pytest.approx(800 / 804)  # > 0.99
    c = lesion_counts(t, p)
    assert lesion_sensitivity(c)[0] == 0.5
    rows = lesion_table(t, p)
    small = [r.detected for r in rows if r.lesion_area < 50]
    large = [r.detected for r in rows if r.lesion_area >= 50]
    assert small == [False] and large == [True]


def test_iou_threshold_is_inclusive():
    t, p = empty(), empty()
    t[0, 0:3, 0:10] = True  # 30 px
    p[0, 0, 0:3] = True  # 3 px inside: IoU = 3 / 30 = 0.1 exactly
    np.testing.assert_array_equal(lesion_counts(t, p, 0.1), [[1, 0, 0]])
    np.testing.assert_array_equal(lesion_counts(t, p, 0.11), [[0, 1, 1]])
    t2, p2 = empty(), empty()
    t2[0, 2:6, 2:6] = p2[0, 2:6, 2:6] = True
    np.testing.assert_array_equal(lesion_counts(t2, p2, 1.0), [[1, 0, 0]])  # exact match


def test_pooled_f1_weights_lesions_not_images():
    counts = np.array([[1, 0, 0], [0, 3, 1], [0, 0, 0]])
    np.testing.assert_allclose(lesion_f1(counts), [1.0, 0.0, 1.0])
    assert pooled_lesion_f1(counts) == pytest.approx(2 / (2 + 3 + 1))
    assert isinstance(pooled_lesion_f1(counts), float)
    np.testing.assert_allclose(lesion_sensitivity(counts), [1.0, 0.0, np.nan])
    np.testing.assert_allclose(lesion_precision(counts), [1.0, 0.0, np.nan])
    # float counts with integral values are accepted
    assert pooled_lesion_f1(counts.astype(float)) == pooled_lesion_f1(counts)


# ---------------------------------------------------------------- random vs brute force


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(5, 40, 40), (3, 14, 16, 12)])
def test_lesion_counts_match_brute_force_random(seed, shape):
    rng = np.random.default_rng(seed)
    sig = (0,) + (1.5,) * (len(shape) - 1)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sig)
    t = field > np.quantile(field, 0.85)  # many small lesions
    p = (field + 0.5 * field.std() * rng.normal(size=shape)) > np.quantile(field, 0.87)
    for thr in (0.1, 0.3, 0.5):
        c = lesion_counts(t, p, thr)
        ref = [brute_counts(t[i], p[i], thr) for i in range(shape[0])]
        np.testing.assert_array_equal(c, ref)
        table = lesion_table(t, p, thr)
        for i in range(shape[0]):
            rows = [r for r in table if r.image_index == i]
            assert sum(r.detected for r in rows) == c[i, 0]
            assert len(rows) == c[i, 0] + c[i, 1]
            assert sum(r.lesion_area for r in rows) == t[i].sum()
    assert c[:, 0].sum() > 0 and c[:, 1].sum() > 0 and c[:, 2].sum() > 0  # non-trivial


# ---------------------------------------------------------------- validation


def test_validation_errors():
    a = empty(2, (8, 8))
    with pytest.raises(ValueError, match=r"y_true \(2, 8, 8\) and y_pred \(2, 8, 7\)"):
        lesion_counts(a, empty(2, (8, 7)))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, D, H, W\).*\(8, 8\)"):
        lesion_table(a[0], a[0])
    with pytest.raises(ValueError, match=r"y_pred must be binary.*1 value\(s\)"):
        bad = a.astype(float)
        bad[0, 0, 0] = 2.0
        lesion_counts(a, bad)
    for thr in (0.0, -0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match=r"min_overlap must be in \(0, 1\], got"):
            lesion_counts(a, a, thr)
    with pytest.raises(ValueError, match=r"min_overlap must be in \(0, 1\], got 0"):
        lesion_table(a, a, 0)
    with pytest.raises(ValueError, match=r"counts must be shaped \(N, 3\).*got shape \(3,\)"):
        lesion_f1(np.array([1, 0, 0]))
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):
        pooled_lesion_f1(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"counts must be non-negative integers, found 1"):
        lesion_sensitivity(np.array([[1, -1, 0]]))
    with pytest.raises(ValueError, match=r"counts must be non-negative integers, found 2"):
        lesion_precision(np.array([[1.5, 0, np.nan]]))
    with pytest.raises(ValueError, match=r"counts must be numeric, got dtype bool"):
        lesion_f1(np.ones((1, 3), bool))
