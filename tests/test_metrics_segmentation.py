"""Segmentation metrics vs MONAI / scikit-learn references, random blobs and edge cases."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import jaccard_score

import medfail.metrics.segmentation as seg_module
from medfail.metrics.segmentation import (
    _boundary,
    _crop_to_masks,
    _surface_distances,
    boundary_f1,
    dice,
    hd95,
    jaccard,
    nsd,
    relative_volume_error,
    volume_ml,
)

ROOT = Path(__file__).resolve().parents[1]


def blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, frac: float):
    """A batch of random blobs: thresholded gaussian-smoothed noise, shape (N, *spatial)."""
    noise = rng.normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(0,) + (sigma,) * (len(shape) - 1))
    thr = np.quantile(smooth.reshape(shape[0], -1), 1 - frac, axis=1)
    return smooth > thr.reshape((-1,) + (1,) * (len(shape) - 1))


def pair(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 3.0):
    """(y_true, y_pred) with partial overlap: prediction = smoothed GT field + smoothed noise."""
    axes_sigma = (0,) + (sigma,) * (len(shape) - 1)
    field = ndimage.gaussian_filter(rng.normal(size=shape), axes_sigma)
    field /= field.std()
    noise = ndimage.gaussian_filter(rng.normal(size=shape), axes_sigma)
    noise /= noise.std()
    frac = rng.uniform(0.1, 0.5)
    y_true = field > np.quantile(field, 1 - frac)
    pred_field = field + rng.uniform(0.2, 0.8) * noise
    y_pred = pred_field > np.quantile(pred_field, 1 - frac * rng.uniform(0.7, 1.3))
    return y_true, y_pred


def onehot(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x[:, None].astype(np.float32))


def edge_cases_2d() -> tuple[np.ndarray, np.ndarray]:
    """Batch: both empty, GT only, pred only, identical, disjoint, border-touching, full."""
    shape = (7, 12, 12)
    t = np.zeros(shape, bool)
    p = np.zeros(shape, bool)
    t[1, 3:6, 3:6] = True  # GT only
    p[2, 3:6, 3:6] = True  # pred only
    t[3, 2:8, 4:9] = p[3, 2:8, 4:9] = True  # identical
    t[4, 0:3, 0:3] = True  # disjoint, far apart
    p[4, 9:12, 9:12] = True
    t[5, 0:5, :] = True  # touches three image borders
    p[5, 0:6, 2:] = True
    t[6] = True  # full image vs border strip
    p[6, :, :3] = True
    return t, p


def monai_bf1(t: np.ndarray, p: np.ndarray, tol: float, spacing=None) -> float:
    """Independent boundary-F1 reference from MONAI edges and KD-tree surface distances."""
    if not t.any() and not p.any():
        return 1.0
    if not t.any() or not p.any():
        return 0.0
    e_pred, e_true = get_mask_edges(p, t, crop=True)
    d_pt = np.asarray(get_surface_distance(e_pred, e_true, spacing=spacing))
    d_tp = np.asarray(get_surface_distance(e_true, e_pred, spacing=spacing))
    prec = np.mean(d_pt <= tol)
    rec = np.mean(d_tp <= tol)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def monai_nsd(t: np.ndarray, p: np.ndarray, tol: float, spacing=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_surface_dice(
            onehot(p),
            onehot(t),
            class_thresholds=[tol],
            include_background=True,
            spacing=spacing,
            use_subvoxels=False,
        )
    return out[:, 0].numpy().astype(np.float64)


def monai_hd95(t: np.ndarray, p: np.ndarray, spacing=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(
            onehot(p),
            onehot(t),
            include_background=True,
            percentile=95,
            directed=False,
            spacing=spacing,
        )
    return out[:, 0].numpy().astype(np.float64)


def brute_distances(bt: np.ndarray, bp: np.ndarray, spacing=None):
    """(pred->true, true->pred) boundary distances by all-pairs cdist on scaled coordinates."""
    scale = np.ones(bt.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    ct, cp = np.argwhere(bt) * scale, np.argwhere(bp) * scale
    d = cdist(cp, ct)
    return d.min(axis=1), d.min(axis=0)


# ---------------------------------------------------------------- dice / jaccard


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dice_jaccard_match_monai_random(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 32, 32) if seed % 2 == 0 else (4, 12, 14, 10)
    t, p = pair(rng, shape, sigma=2.0)
    d, j = dice(t, p), jaccard(t, p)
    assert d.shape == j.shape == (shape[0],)
    assert d.dtype == j.dtype == np.float64
    ref_d = compute_dice(onehot(p), onehot(t), include_background=True, ignore_empty=False)
    ref_j = compute_iou(onehot(p), onehot(t), include_background=True, ignore_empty=False)
    np.testing.assert_allclose(d, ref_d[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(j, ref_j[:, 0].numpy(), rtol=1e-6)
    assert np.all((d > 0) & (d < 1))  # the random pairs overlap partially
    np.testing.assert_allclose(j, d / (2 - d), rtol=1e-12)
    for i in range(shape[0]):
        assert j[i] == pytest.approx(jaccard_score(t[i].ravel(), p[i].ravel()), rel=1e-12)


def test_dice_jaccard_edge_cases_match_monai():
    t, p = edge_cases_2d()
    d, j = dice(t, p), jaccard(t, p)
    np.testing.assert_array_equal(d[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(j[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    ref_d = compute_dice(onehot(p), onehot(t), include_background=True, ignore_empty=False)
    ref_j = compute_iou(onehot(p), onehot(t), include_background=True, ignore_empty=False)
    np.testing.assert_allclose(d, ref_d[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(j, ref_j[:, 0].numpy(), rtol=1e-6)


def test_dice_hand_computed_and_int_input():
    t = np.zeros((1, 4, 4), dtype=np.uint8)
    p = np.zeros((1, 4, 4), dtype=np.int64)
    t[0, :2, :2] = 1  # 4 pixels
    p[0, :2, :3] = 1  # 6 pixels, 4 shared
    assert dice(t, p)[0] == pytest.approx(8 / 10)
    assert jaccard(t, p)[0] == pytest.approx(4 / 6)
    assert dice(t, p)[0] == dice(p, t)[0]


# ---------------------------------------------------------------- boundaries


@pytest.mark.parametrize("seed", [0, 1])
def test_boundary_matches_monai_get_mask_edges(seed):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (6, 24, 20), sigma=2.0)
    t2, p2 = edge_cases_2d()
    for a, b in ((t, p), (t2, p2)):
        bt, bp = _boundary(a), _boundary(b)
        for i in range(len(a)):
            # crop=False: same frame; MONAI's crop only pads/crops zeros around the union box
            e_pred, e_true = get_mask_edges(b[i], a[i], crop=False)
            np.testing.assert_array_equal(bt[i], e_true)
            np.testing.assert_array_equal(bp[i], e_pred)
            if a[i].any() or b[i].any():
                c_pred, c_true = get_mask_edges(b[i], a[i], crop=True)
                assert c_pred.sum() == bp[i].sum() and c_true.sum() == bt[i].sum()


def test_boundary_of_full_and_square_masks():
    m = np.zeros((2, 5, 5), bool)
    m[0, 1:4, 1:4] = True
    m[1] = True
    b = _boundary(m)
    assert b[0].sum() == 8 and not b[0, 2, 2]  # ring around the centre pixel
    assert b[1].sum() == 16  # full image: the image border is the boundary
    # images are eroded independently (no leakage along the batch axis)
    np.testing.assert_array_equal(_boundary(m[:1])[0], b[0])


# ---------------------------------------------------------------- boundary F1 / NSD


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.0, 0.6)])
def test_boundary_f1_and_nsd_match_monai_2d(seed, spacing):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (6, 64, 64), sigma=3.0)
    for tol in (1.0, 2.0, 3.5):
        bf = boundary_f1(t, p, tolerance=tol, spacing=spacing)
        ref_bf = [monai_bf1(t[i], p[i], tol, spacing) for i in range(len(t))]
        np.testing.assert_allclose(bf, ref_bf, rtol=1e-12, atol=0)
        ns = nsd(t, p, tolerance=tol, spacing=spacing)
        np.testing.assert_allclose(ns, monai_nsd(t, p, tol, spacing), rtol=1e-6)
        assert np.all((bf > 0) & (bf < 1))  # non-trivial values
    assert bf.shape == ns.shape == (6,) and bf.dtype == np.float64


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.8, 1.0)])
def test_boundary_f1_and_nsd_match_monai_3d(seed, spacing):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (3, 16, 16, 16), sigma=2.0)
    for tol in (1.0, 2.0):
        bf = boundary_f1(t, p, tolerance=tol, spacing=spacing)
        ref_bf = [monai_bf1(t[i], p[i], tol, spacing) for i in range(len(t))]
        np.testing.assert_allclose(bf, ref_bf, rtol=1e-12, atol=0)
        np.testing.assert_allclose(
            nsd(t, p, tolerance=tol, spacing=spacing), monai_nsd(t, p, tol, spacing), rtol=1e-6
        )


def test_blobs_helper_gives_nonempty_masks():
    m = blobs(np.random.default_rng(0), (3, 32, 32), sigma=3.0, frac=0.2)
    assert m.shape == (3, 32, 32) and np.all(m.reshape(3, -1).mean(1) > 0.15)


def test_boundary_metrics_on_independent_blobs_match_monai():
    rng = np.random.default_rng(7)
    t = blobs(rng, (5, 48, 48), sigma=3.0, frac=0.3)
    p = blobs(rng, (5, 48, 48), sigma=3.0, frac=0.3)
    bf = boundary_f1(t, p, tolerance=2.0)
    np.testing.assert_allclose(bf, [monai_bf1(t[i], p[i], 2.0) for i in range(5)], rtol=1e-12)
    np.testing.assert_allclose(nsd(t, p, 2.0), monai_nsd(t, p, 2.0), rtol=1e-6)


def test_boundary_metrics_edge_cases():
    t, p = edge_cases_2d()
    bf = boundary_f1(t, p, tolerance=2.0)
    ns = nsd(t, p, tolerance=2.0)
    # both empty, GT only, pred only, identical, disjoint far apart
    np.testing.assert_array_equal(bf[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(ns[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    ref_bf = [monai_bf1(t[i], p[i], 2.0) for i in range(len(t))]
    np.testing.assert_allclose(bf, ref_bf, rtol=1e-12)
    ref_ns = monai_nsd(t, p, 2.0)
    assert np.isnan(ref_ns[0])  # MONAI: both empty -> NaN; we return 1.0 (documented)
    np.testing.assert_allclose(ns[1:], ref_ns[1:], rtol=1e-6)


def test_boundary_f1_hand_computed():
    t = np.zeros((1, 9, 9), bool)
    p = np.zeros((1, 9, 9), bool)
    t[0, 2:5, 2:5] = True  # ring of 8 pixels, all rows 2..4 / cols 2..4
    p[0, 2:5, 4:7] = True  # shifted by 2 columns
    # pred ring cols 4..6: col 4 (3 px) at distance 0; col 5 (2 px) at 1; col 6 (3 px) at 2
    assert boundary_f1(t, p, tolerance=1.0)[0] == pytest.approx(5 / 8)
    assert nsd(t, p, tolerance=1.0)[0] == pytest.approx(10 / 16)
    assert boundary_f1(t, p, tolerance=2.0)[0] == 1.0  # distance exactly = tolerance counts
    assert boundary_f1(t, p, tolerance=0.0)[0] == pytest.approx(3 / 8)
    # 1 px apart horizontally at spacing 0.5 mm -> column 6 is 1.0 mm away
    assert boundary_f1(t, p, tolerance=1.0, spacing=(1.0, 0.5))[0] == 1.0
    assert boundary_f1(t, p, tolerance=1.0, spacing=0.5)[0] == 1.0


def test_boundary_metrics_properties():
    rng = np.random.default_rng(3)
    t, p = pair(rng, (4, 40, 40), sigma=3.0)
    np.testing.assert_allclose(boundary_f1(t, p), boundary_f1(p, t), rtol=1e-12)
    np.testing.assert_allclose(nsd(t, p), nsd(p, t), rtol=1e-12)
    prev = np.zeros(4)
    for tol in (0.0, 1.0, 2.0, 4.0, 8.0):
        cur = nsd(t, p, tolerance=tol)
        assert np.all(cur >= prev)
        prev = cur
    np.testing.assert_array_equal(nsd(t, p, tolerance=100.0), 1.0)
    np.testing.assert_array_equal(boundary_f1(t, t, tolerance=0.0), 1.0)
    # a scalar spacing s with tolerance s·k equals unit spacing with tolerance k
    np.testing.assert_allclose(boundary_f1(t, p, 1.5, spacing=2.0), boundary_f1(t, p, 0.75))


# ---------------------------------------------------------------- HD95


@pytest.mark.parametrize("spacing", [None, (1.0, 0.6), 0.7])
def test_surface_distances_match_brute_force(spacing):
    rng = np.random.default_rng(11)
    t, p = pair(rng, (4, 30, 26), sigma=2.0)
    t2, p2 = edge_cases_2d()
    for a, b in ((t, p), (t2, p2)):
        bt, bp = _boundary(a), _boundary(b)
        sp = (1.0, 1.0) if spacing is None else np.broadcast_to(spacing, (2,))
        seen = []
        for i, d_pt, d_tp in _surface_distances(bt, bp, tuple(float(x) for x in sp)):
            seen.append(i)
            ref_pt, ref_tp = brute_distances(bt[i], bp[i], sp)
            np.testing.assert_allclose(d_pt, ref_pt, rtol=1e-12)  # C order on both sides
            np.testing.assert_allclose(d_tp, ref_tp, rtol=1e-12)
        nonempty = [i for i in range(len(a)) if a[i].any() and b[i].any()]
        assert seen == nonempty


def brute_hd95(t: np.ndarray, p: np.ndarray, spacing=None) -> float:
    d_pt, d_tp = brute_distances(_boundary(t[None])[0], _boundary(p[None])[0], spacing)
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.0, 0.6)])
def test_hd95_matches_monai_2d(seed, spacing):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (6, 64, 64), sigma=3.0)
    h = hd95(t, p, spacing=spacing)
    assert h.shape == (6,) and h.dtype == np.float64
    assert np.all((h > 0) & np.isfinite(h))
    np.testing.assert_allclose(h, monai_hd95(t, p, spacing), rtol=1e-5)  # MONAI: float32
    ref = [brute_hd95(t[i], p[i], spacing) for i in range(len(t))]
    np.testing.assert_allclose(h, ref, rtol=1e-12)
    # independent blobs: far-apart boundaries, large distances
    b1 = blobs(rng, (4, 48, 40), sigma=3.0, frac=0.3)
    b2 = blobs(rng, (4, 48, 40), sigma=3.0, frac=0.3)
    np.testing.assert_allclose(hd95(b1, b2, spacing), monai_hd95(b1, b2, spacing), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.8, 1.0)])
def test_hd95_matches_monai_3d(seed, spacing):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (3, 16, 18, 14), sigma=2.0)
    h = hd95(t, p, spacing=spacing)
    assert np.all((h > 0) & np.isfinite(h))
    np.testing.assert_allclose(h, monai_hd95(t, p, spacing), rtol=1e-5)
    np.testing.assert_allclose(h, [brute_hd95(t[i], p[i], spacing) for i in range(3)], rtol=1e-12)
    b1 = blobs(rng, (2, 14, 14, 14), sigma=2.0, frac=0.2)
    b2 = blobs(rng, (2, 14, 14, 14), sigma=2.0, frac=0.2)
    np.testing.assert_allclose(hd95(b1, b2, spacing), monai_hd95(b1, b2, spacing), rtol=1e-5)


def test_hd95_agreement_with_monai_is_the_documented_2e_5_relative():
    """docs/metrics.md states the agreement as measured: within 2e-5 relative, not 'float32
    precision' (MONAI's float32 distances and percentile drift beyond float32's 6e-8 on some
    images: 1.5e-5 at most over 2,400 random 96² pairs with five spacings)."""
    rel = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        for spacing in (None, (0.7, 0.7), (1.3, 0.45), (3.1, 0.33)):
            t, p = pair(rng, (4, 96, 96), sigma=rng.uniform(1.5, 5.0))
            h, m = hd95(t, p, spacing), monai_hd95(t, p, spacing)
            rel += list(np.abs(h - m) / h)
    rel = np.asarray(rel)
    assert rel.max() < 2e-5
    assert rel.max() > 1e-6  # well beyond float32 rounding on some images
    doc = " ".join((ROOT / "docs" / "metrics.md").read_text().split())
    assert "agree with MONAI to **2e-5 relative**" in doc
    assert "float32 precision" not in doc


def test_docs_state_tolerances_and_units_per_metric():
    """docs/metrics.md: one table row per distance metric with its tolerance and unit (BF1 in
    px in 2-D, mm in volumes; NSD and HD95 in mm only with a spacing for every image), no
    'τ is then in mm'."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines()
            if line.startswith("| `") and line.count("|") == 6}
    assert "2-D: **px**" in rows["`boundary_f1`"] and "volumes: **mm**" in rows["`boundary_f1`"]
    assert "**mm**" in rows["`nsd`"] and "px (τ = `boundary_tolerance_px`)" in rows["`nsd`"]
    assert "**mm**" in rows["`hd95`"] and "Euclidean" in rows["`pixel_ece_band`"]
    assert "τ is then in mm" not in doc and "metric_units" in doc


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # GT: a 3x3 square; prediction: the same square plus a far single pixel. pred->GT has
    # 1 of 9 distances large (its P95 interpolates towards it); GT->pred is all zeros.
    t = np.zeros((1, 20, 20), bool)
    t[0, 2:5, 2:5] = True
    p = t.copy()
    p[0, 15, 15] = True
    d_pt, d_tp = brute_distances(_boundary(t)[0], _boundary(p)[0])
    assert np.all(d_tp == 0) and d_pt.size == 9
    expected = np.percentile(d_pt, 95)
    assert hd95(t, p)[0] == pytest.approx(expected, rel=1e-12)
    assert hd95(t, p)[0] != pytest.approx(np.percentile(np.r_[d_pt, d_tp], 95))  # pooled
    assert hd95(t, p)[0] == pytest.approx(monai_hd95(t, p)[0], rel=1e-6)


def test_hd95_hand_computed():
    t = np.zeros((3, 9, 9), bool)
    p = np.zeros((3, 9, 9), bool)
    t[0, 2:5, 2:5] = True  # ring of 8
    p[0, 2:5, 4:7] = True  # shifted by 2 columns: distances 0,0,0,1,1,2,2,2 both ways
    t[1, 1:6, 1:6] = p[1, 1:6, 1:6] = True  # identical
    t[2, 0, 0] = True  # single pixels (3, 4) apart
    p[2, 3, 4] = True
    np.testing.assert_allclose(hd95(t, p), [2.0, 0.0, 5.0])
    # spacing: columns 0.5 mm apart -> the 2-column shift is 1 mm; (3, 4) px -> (3, 2) mm
    np.testing.assert_allclose(hd95(t, p, spacing=(1.0, 0.5)), [1.0, 0.0, np.sqrt(13.0)])
    np.testing.assert_allclose(hd95(t, p, spacing=(1.0, 0.5)), monai_hd95(t, p, (1.0, 0.5)))


def test_hd95_edge_cases_and_clamp():
    t, p = edge_cases_2d()
    h = hd95(t, p)
    # both empty -> 0, one empty -> inf, identical -> 0
    np.testing.assert_array_equal(h[:4], [0.0, np.inf, np.inf, 0.0])
    assert np.all(np.isfinite(h[4:]))
    ref = monai_hd95(t, p)
    assert np.all(np.isnan(ref[:3]))  # MONAI: NaN whenever a mask is empty (we: 0 / inf)
    np.testing.assert_allclose(h[3:], ref[3:], rtol=1e-6)
    far = h[4]  # disjoint squares in opposite corners
    c = hd95(t, p, max_distance=5.0)
    np.testing.assert_array_equal(c, np.minimum(h, 5.0))
    np.testing.assert_array_equal(c[:4], [0.0, 5.0, 5.0, 0.0])
    assert far > 5.0 and c[4] == 5.0
    np.testing.assert_array_equal(hd95(t, p, max_distance=1e6)[1:3], 1e6)


def test_hd95_properties():
    rng = np.random.default_rng(5)
    t, p = pair(rng, (4, 40, 40), sigma=3.0)
    h = hd95(t, p)
    np.testing.assert_array_equal(h, hd95(p, t))  # symmetric
    np.testing.assert_allclose(hd95(t, p, spacing=2.0), 2.0 * h, rtol=1e-12)
    np.testing.assert_array_equal(hd95(t, t), 0.0)
    # bounded by the full (100th percentile) Hausdorff distance
    for i in range(4):
        d_pt, d_tp = brute_distances(_boundary(t)[i], _boundary(p)[i])
        assert h[i] <= max(d_pt.max(), d_tp.max())
    # int input and a 2-D mask batch of one
    np.testing.assert_array_equal(hd95(t.astype(np.uint8), p.astype(int)), h)


# ---------------------------------------------------------------- validation


def test_validation_errors():
    a = np.zeros((2, 8, 8), bool)
    with pytest.raises(ValueError, match=r"y_true \(2, 8, 8\) and y_pred \(2, 8, 7\)"):
        dice(a, np.zeros((2, 8, 7), bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, D, H, W\).*\(8, 8\)"):
        jaccard(a[0], a[0])
    with pytest.raises(ValueError, match=r"y_pred must be binary.*1 value\(s\)"):
        bad = a.astype(float)
        bad[0, 0, 0] = 0.5
        dice(a, bad)
    with pytest.raises(ValueError, match=r"y_true must be binary"):
        nan = a.astype(float)
        nan[1, 2, 2] = np.nan
        nsd(nan, a)
    with pytest.raises(ValueError, match=r"tolerance must be a finite number >= 0"):
        boundary_f1(a, a, tolerance=-1.0)
    with pytest.raises(ValueError, match=r"spacing must be a number or a sequence of 2"):
        boundary_f1(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing values must be finite and > 0"):
        nsd(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"spacing must be a number or a sequence of 2"):
        hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"y_true \(2, 8, 8\) and y_pred \(2, 8, 7\)"):
        hd95(a, np.zeros((2, 8, 7), bool))
    for bad_cap in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"max_distance must be None or a finite number > 0"):
            hd95(a, a, max_distance=bad_cap)


# ---------------------------------------------------------------- 3-D volumes in mm

ANISO = (0.8, 0.8, 2.5)  # mm per axis (X, Y, Z), a thick-slice CT/MRI volume


def monai_dice_iou(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kw = {"include_background": True, "ignore_empty": False}
    return (compute_dice(onehot(p), onehot(t), **kw)[:, 0].numpy(),
            compute_iou(onehot(p), onehot(t), **kw)[:, 0].numpy())


def assert_all_match_monai(t: np.ndarray, p: np.ndarray, spacing, tol_mm: float = 2.0) -> None:
    """Dice, Jaccard, HD95, NSD and boundary F1 (τ in mm) vs MONAI where MONAI is defined
    (NaN: an empty mask, our conventions instead, checked by the callers)."""
    ref_d, ref_j = monai_dice_iou(t, p)
    np.testing.assert_allclose(dice(t, p), ref_d, rtol=1e-6)
    np.testing.assert_allclose(jaccard(t, p), ref_j, rtol=1e-6)
    h, ref_h = hd95(t, p, spacing=spacing), monai_hd95(t, p, spacing)
    ok = ~np.isnan(ref_h)
    np.testing.assert_allclose(h[ok], ref_h[ok], rtol=2e-5)
    s, ref_s = nsd(t, p, tol_mm, spacing), monai_nsd(t, p, tol_mm, spacing)
    ok = ~np.isnan(ref_s)
    np.testing.assert_allclose(s[ok], ref_s[ok], rtol=1e-6)
    ref_bf = [monai_bf1(t[i], p[i], tol_mm, spacing) for i in range(len(t))]
    np.testing.assert_allclose(boundary_f1(t, p, tol_mm, spacing), ref_bf, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_3d_anisotropic_spacing_all_metrics_match_monai(seed):
    rng = np.random.default_rng(seed)
    t, p = pair(rng, (3, 20, 22, 16), sigma=2.0)
    assert_all_match_monai(t, p, ANISO)
    # the spacing matters: the same voxels in mm differ from voxel units, and the tolerance
    # 2 mm is 2.5 voxels in-plane but below one slice (2.5 mm) across slices
    assert not np.allclose(hd95(t, p, spacing=ANISO), hd95(t, p))
    assert not np.allclose(nsd(t, p, 2.0, ANISO), nsd(t, p, 2.0))
    h = hd95(t, p, spacing=ANISO)
    assert np.all(np.isfinite(h) & (h > 0))


def edge_cases_3d() -> tuple[np.ndarray, np.ndarray]:
    """Volumes: both empty, GT only, pred only, one voxel (same), one voxel vs one voxel one
    slice and one column apart, a box touching three borders vs a shifted one, full volume vs a
    slab of the first slices."""
    shape = (7, 12, 12, 10)
    t = np.zeros(shape, bool)
    p = np.zeros(shape, bool)
    t[1, 3:6, 3:6, 2:5] = True
    p[2, 3:6, 3:6, 2:5] = True
    t[3, 5, 5, 5] = p[3, 5, 5, 5] = True
    t[4, 5, 5, 5] = True
    p[4, 6, 5, 6] = True
    t[5, 0:4, :, 0:3] = True
    p[5, 0:5, 2:, 0:2] = True
    t[6] = True
    p[6, :, :, :2] = True
    return t, p


def test_3d_edge_cases_match_monai_and_conventions():
    t, p = edge_cases_3d()
    assert_all_match_monai(t, p, ANISO)
    d, j = dice(t, p), jaccard(t, p)
    np.testing.assert_array_equal(d[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(j[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    h = hd95(t, p, spacing=ANISO)
    np.testing.assert_array_equal(h[:4], [0.0, np.inf, np.inf, 0.0])
    # single voxels one column (0.8 mm) and one slice (2.5 mm) apart
    assert h[4] == pytest.approx(np.hypot(0.8, 2.5), rel=1e-12)
    for f in (nsd, boundary_f1):
        v = f(t, p, 2.0, ANISO)
        np.testing.assert_array_equal(v[:5], [1.0, 0.0, 0.0, 1.0, 0.0])  # 2.62 mm > 2 mm
        assert f(t, p, 3.0, ANISO)[4] == 1.0
        assert 0.0 < v[5] < 1.0 and 0.0 < v[6] < 1.0  # border boxes: non-trivial
    ref = monai_hd95(t, p, ANISO)
    assert np.all(np.isnan(ref[:3]))  # MONAI: NaN for an empty mask (we: 0 / inf)
    assert np.isnan(monai_nsd(t, p, 2.0, ANISO)[0])  # MONAI: both empty NaN (we: 1.0)


def test_3d_full_volume_boundary_is_its_border_as_monai():
    """A mask touching the volume border: the border voxels are boundary (zero padding)."""
    t, p = edge_cases_3d()
    b = _boundary(t[6:7])[0]
    interior = np.zeros_like(b)
    interior[1:-1, 1:-1, 1:-1] = True
    np.testing.assert_array_equal(b, ~interior)
    e_pred, e_true = get_mask_edges(p[6], t[6], crop=False)
    np.testing.assert_array_equal(_boundary(t[6:7])[0], e_true)
    np.testing.assert_array_equal(_boundary(p[6:7])[0], e_pred)


@pytest.mark.slow
def test_3d_96_cubed_pair_matches_monai():
    """One 96³ pair (about one FLARE-sized crop): all metrics equal MONAI (speed is measured in
    benchmarks/, never asserted here)."""
    t, p = pair(np.random.default_rng(1), (1, 96, 96, 96), sigma=4.0)
    assert_all_match_monai(t, p, ANISO)


# ---------------------------------------------------------------- cropping to the masks


def small_objects(rng: np.random.Generator,
                  shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A batch in a large image: small random blobs placed in a sub-box away from the border,
    touching one or two image borders, a GT-only and a prediction-only image, and the two
    masks far apart (so the cut keeps a large, sparse box)."""
    n, spatial = shape[0], shape[1:]
    t, p = np.zeros(shape, bool), np.zeros(shape, bool)
    small = tuple(max(6, s // 5) for s in spatial)
    bt, bp = pair(rng, (n, *small), sigma=1.5)
    for i in range(n):
        kind = i % 6
        if kind == 0:  # interior
            at = tuple(int(rng.integers(2, s - m - 2)) for s, m in zip(spatial, small, strict=True))
        elif kind == 1:  # touches the low border of every axis
            at = (0,) * len(spatial)
        else:  # touches the high border of the first axis (and more for kind 5)
            at = tuple(s - m if a == 0 or kind == 5 else int(rng.integers(0, s - m))
                       for a, (s, m) in enumerate(zip(spatial, small, strict=True)))
        box = (i, *(slice(a, a + m) for a, m in zip(at, small, strict=True)))
        t[box], p[box] = bt[i], bp[i]
        if kind == 2:
            p[i] = False  # GT only
        if kind == 3:
            t[i] = False  # prediction only
        if kind == 4:  # prediction moved to the opposite corner: a sparse, large cut
            p[i] = False
            p[(i, *(slice(s - m, s) for s, m in zip(spatial, small, strict=True)))] = bp[i]
    return t, p


def uncropped(monkeypatch: pytest.MonkeyPatch, fn, *args, **kwargs) -> np.ndarray:
    """``fn`` computed on the whole images (the masks' cut disabled)."""
    with monkeypatch.context() as m:
        m.setattr(seg_module, "_crop_to_masks", lambda t, p: (t, p))
        return fn(*args, **kwargs)


def test_crop_to_masks_keeps_every_boundary_pixel():
    rng = np.random.default_rng(21)
    for shape in ((12, 48, 40), (6, 24, 20, 18)):
        t, p = small_objects(rng, shape)
        for i in range(len(t)):
            ti, pi = t[i:i + 1], p[i:i + 1]
            ct, cp = _crop_to_masks(ti, pi)
            assert np.shares_memory(ct, ti)  # a view, no copy
            full_b = _boundary(ti), _boundary(pi)
            cut_b = _boundary(ct), _boundary(cp)
            assert [b.sum() for b in cut_b] == [b.sum() for b in full_b]  # none left out
            assert ct.sum() == ti.sum() and cp.sum() == pi.sum()
            if not (ti.any() or pi.any()):
                assert ct.shape[1:] == (1,) * (ti.ndim - 1)
                continue
            # the cut is the masks' bounding box; its boundary is the boundary restricted to
            # it, pixel for pixel (outside the box there is none)
            coords = np.argwhere(ti[0] | pi[0])
            lo, hi = coords.min(0), coords.max(0) + 1
            box = (slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))
            assert ct.shape == ti[box].shape
            np.testing.assert_array_equal(cut_b[0], full_b[0][box])
            np.testing.assert_array_equal(cut_b[1], full_b[1][box])


@pytest.mark.parametrize("spacing", [None, (1.0, 0.6), 0.7])
def test_cut_changes_no_value_2d(monkeypatch, spacing):
    """Small masks in a large image, at and away from the border, one mask empty: every
    boundary metric equals its value on the whole images, bit for bit, per image and as a
    batch (the batch is cut to the union of all its masks), and MONAI where it is defined."""
    t, p = small_objects(np.random.default_rng(3), (12, 96, 80))
    h = hd95(t, p, spacing=spacing)
    np.testing.assert_array_equal(h, uncropped(monkeypatch, hd95, t, p, spacing=spacing))
    np.testing.assert_array_equal(h, [hd95(t[i:i + 1], p[i:i + 1], spacing=spacing)[0]
                                      for i in range(len(t))])
    empty = ~t.any(axis=(1, 2)) | ~p.any(axis=(1, 2))
    assert np.isinf(h[empty]).all() and empty.sum() >= 2 and np.isfinite(h[~empty]).all()
    ref = monai_hd95(t, p, spacing)
    np.testing.assert_allclose(h[~empty], ref[~empty], rtol=2e-5)
    for tol in (1.0, 2.0, 40.0):
        for f in (nsd, boundary_f1):
            v = f(t, p, tol, spacing)
            np.testing.assert_array_equal(v, uncropped(monkeypatch, f, t, p, tol, spacing))
            np.testing.assert_array_equal(v, [f(t[i:i + 1], p[i:i + 1], tol, spacing)[0]
                                              for i in range(len(t))])
        ref_s = monai_nsd(t, p, tol, spacing)
        np.testing.assert_allclose(nsd(t, p, tol, spacing)[~empty], ref_s[~empty], rtol=1e-6)


@pytest.mark.parametrize("spacing", [ANISO, None])
def test_cut_changes_no_value_3d_anisotropic(monkeypatch, spacing):
    t, p = small_objects(np.random.default_rng(8), (6, 40, 36, 30))
    h = hd95(t, p, spacing=spacing)
    np.testing.assert_array_equal(h, uncropped(monkeypatch, hd95, t, p, spacing=spacing))
    np.testing.assert_array_equal(h, [hd95(t[i:i + 1], p[i:i + 1], spacing=spacing)[0]
                                      for i in range(len(t))])
    empty = ~t.any(axis=(1, 2, 3)) | ~p.any(axis=(1, 2, 3))
    np.testing.assert_allclose(h[~empty], monai_hd95(t, p, spacing)[~empty], rtol=2e-5)
    # tolerance 10: a ball too large for dilation on the whole volume (distance transforms),
    # not on the cut of one image (dilation): both ways give the same counts
    sp = spacing if spacing else (1.0, 1.0, 1.0)
    assert seg_module._ball_rows(10.0 * (1 + 1e-9), sp, t.shape[1:]) is None
    cut_shape = _crop_to_masks(t[:1], p[:1])[0].shape[1:]
    assert seg_module._ball_rows(10.0 * (1 + 1e-9), sp, cut_shape) is not None
    for tol in (2.0, 10.0):
        for f in (nsd, boundary_f1):
            v = f(t, p, tol, spacing)
            np.testing.assert_array_equal(v, uncropped(monkeypatch, f, t, p, tol, spacing))
            np.testing.assert_array_equal(v, [f(t[i:i + 1], p[i:i + 1], tol, spacing)[0]
                                              for i in range(len(t))])
    assert_all_match_monai(t[~empty], p[~empty], sp)


def test_cut_edge_cases_and_one_pixel_masks(monkeypatch):
    """Both empty, one empty, single pixels in opposite corners, a full image: as uncut."""
    t2, p2 = edge_cases_2d()
    t3, p3 = edge_cases_3d()
    corners = np.zeros((2, 30, 20), bool), np.zeros((2, 30, 20), bool)
    corners[0][0, 0, 0] = corners[1][0, -1, -1] = True
    corners[0][1, 0, -1] = corners[1][1, 0, -1] = True
    for t, p in ((t2, p2), (t3, p3), corners):
        sp = (0.9,) * (t.ndim - 1)
        for f, kw in ((hd95, {"spacing": sp}), (nsd, {"tolerance": 2.0, "spacing": sp}),
                      (boundary_f1, {"tolerance": 2.0})):
            np.testing.assert_array_equal(f(t, p, **kw), uncropped(monkeypatch, f, t, p, **kw))
    assert hd95(*corners).tolist() == [pytest.approx(np.hypot(29, 19), rel=1e-15), 0.0]


# ---------------------------------------------------------------- volumes


def test_relative_volume_error_matches_numpy_reference():
    rng = np.random.default_rng(4)
    t, p = pair(rng, (5, 16, 18, 12), sigma=2.0)
    ref = [(p[i].sum() * np.prod(ANISO) - t[i].sum() * np.prod(ANISO))
           / (t[i].sum() * np.prod(ANISO)) for i in range(5)]  # the voxel volume cancels
    rve = relative_volume_error(t, p)
    assert rve.shape == (5,) and rve.dtype == np.float64
    np.testing.assert_allclose(rve, ref, rtol=1e-12)
    assert np.any(rve < 0) or np.any(rve > 0)
    np.testing.assert_allclose(relative_volume_error(p, t), t.sum((1, 2, 3)) / p.sum((1, 2, 3))
                               - 1, rtol=1e-12)  # signed: swapping the roles changes it
    # 2-D works the same way (areas)
    np.testing.assert_allclose(relative_volume_error(t[:, :, :, 0], p[:, :, :, 0]),
                               p[..., 0].sum((1, 2)) / t[..., 0].sum((1, 2)) - 1, rtol=1e-12)


def test_relative_volume_error_edge_cases():
    t, p = edge_cases_3d()
    rve = relative_volume_error(t, p)
    # both empty, GT only (nothing predicted: -100 %), pred only (+inf), one voxel each
    np.testing.assert_array_equal(rve[:5], [0.0, -1.0, np.inf, 0.0, 0.0])
    assert rve[6] == pytest.approx(2 / 10 - 1)  # full volume vs 2 of 10 slices
    assert relative_volume_error(t[6:7].astype(np.uint8), t[6:7])[0] == 0.0


def test_volume_ml_matches_numpy_reference():
    rng = np.random.default_rng(5)
    m = rng.random((16, 18, 12)) < 0.3
    for spacing in (ANISO, (1.0, 1.0, 1.0), 0.5, (0.43, 0.43, 5.0)):
        sp = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
        assert volume_ml(m, spacing) == pytest.approx(m.sum() * sp.prod() / 1000, rel=1e-12)
    assert volume_ml(np.ones((10, 10, 10), np.uint8), 1.0) == pytest.approx(1.0)  # 1 cm³
    assert volume_ml(np.zeros((4, 4, 4), bool), ANISO) == 0.0
    with pytest.raises(ValueError, match=r"one 3-D mask \(X, Y, Z\), got shape \(4, 4\)"):
        volume_ml(np.zeros((4, 4), bool), ANISO)
    with pytest.raises(ValueError, match=r"spacing must be a number or a sequence of 3"):
        volume_ml(m, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing values must be finite and > 0"):
        volume_ml(m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"mask must be binary"):
        volume_ml(m * 2, ANISO)
    with pytest.raises(ValueError, match=r"mask must be binary"):
        volume_ml(np.full((2, 2, 2), np.nan), ANISO)
