"""Boundary F1 and NSD at 2 px: medfail vs MONAI on 64 random 256 x 256 mask pairs.

MONAI side: ``compute_surface_dice`` (NSD, ``use_subvoxels=False``) and the boundary-F1
reference of ``tests/test_metrics_segmentation.py`` (``get_mask_edges`` +
``get_surface_distance`` per image). Values must agree (pixel-boundary convention: a boundary
pixel is a foreground pixel with a background face neighbour) before any time is reported.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from benchmarks.common import best_of, ratio

N, SIZE, TOLERANCE, REPS = 64, 256, 2.0, 3


def masks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred): smooth random blobs covering ~30 % and a noisy prediction of them."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape, sigma = (N, SIZE, SIZE), (0, 4, 4)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    pred = field + 0.5 * noise * field.std() / noise.std()

    def top(x: np.ndarray, frac: float) -> np.ndarray:
        thr = np.quantile(x.reshape(N, -1), 1 - frac, axis=1)
        return x > thr[:, None, None]

    return top(field, 0.3), top(pred, 0.3)


def monai_nsd(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    import torch
    from monai.metrics import compute_surface_dice

    out = compute_surface_dice(torch.from_numpy(p[:, None].astype(np.float32)),
                               torch.from_numpy(t[:, None].astype(np.float32)),
                               class_thresholds=[TOLERANCE], include_background=True,
                               use_subvoxels=False)
    return out[:, 0].numpy().astype(np.float64)


def monai_bf1(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The tests' MONAI boundary-F1 reference, image by image."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    out = np.empty(len(t))
    for i in range(len(t)):
        if not t[i].any() or not p[i].any():
            out[i] = float(not t[i].any() and not p[i].any())
            continue
        e_pred, e_true = get_mask_edges(p[i], t[i], crop=True)
        prec = np.mean(np.asarray(get_surface_distance(e_pred, e_true)) <= TOLERANCE)
        rec = np.mean(np.asarray(get_surface_distance(e_true, e_pred)) <= TOLERANCE)
        out[i] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return out


def run() -> dict[str, Any]:
    import torch

    from medfail.metrics.segmentation import boundary_f1, nsd

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t, p = masks()
    values = {"medfail_nsd": nsd(t, p, TOLERANCE), "monai_nsd": monai_nsd(t, p),
              "medfail_bf1": boundary_f1(t, p, TOLERANCE), "monai_bf1": monai_bf1(t, p)}
    np.testing.assert_allclose(values["medfail_nsd"], values["monai_nsd"], rtol=1e-6)
    np.testing.assert_allclose(values["medfail_bf1"], values["monai_bf1"], rtol=1e-12)
    secs = best_of({
        "medfail_nsd": lambda: nsd(t, p, TOLERANCE),
        "medfail_bf1": lambda: boundary_f1(t, p, TOLERANCE),
        "monai_nsd": lambda: monai_nsd(t, p),
        "monai_bf1": lambda: monai_bf1(t, p),
    }, reps=REPS, warmup=False)
    medfail = secs["medfail_nsd"] + secs["medfail_bf1"]
    monai = secs["monai_nsd"] + secs["monai_bf1"]
    return {
        "masks": f"{N} random blob pairs, {SIZE}x{SIZE}, ~30 % foreground, tolerance "
                 f"{TOLERANCE:g} px",
        "threads": "torch 1",
        "timing": f"whole batch, best of {REPS} interleaved rounds",
        "seconds": {k: round(v, 4) for k, v in secs.items()},
        "speedup_nsd": round(ratio(secs["monai_nsd"], secs["medfail_nsd"]), 2),
        "speedup_bf1": round(ratio(secs["monai_bf1"], secs["medfail_bf1"]), 2),
        "speedup": ratio(monai, medfail),
        "values_equal": "nsd rtol 1e-6 (MONAI float32), boundary F1 rtol 1e-12",
        "mean_nsd": round(float(values["medfail_nsd"].mean()), 4),
        "mean_bf1": round(float(values["medfail_bf1"].mean()), 4),
    }
