"""The failure suite written the obvious way with the peers (the script a user would write).

A Python loop over conditions; each image corrupted one at a time (imagecorruptions 1.1.2 where
it has the corruption, medfail's ``corrupt`` otherwise); the model called per batch through the
same adapter medfail uses (``adapter.predict_proba``: same preprocessing and forward); then

* segmentation: MONAI per image: ``DiceMetric``, NSD by ``compute_surface_dice`` at 2 px,
  boundary F1 at 2 px from ``get_mask_edges`` + ``get_surface_distance`` (the reference of
  ``tests/test_metrics_segmentation.py``), HD95 by ``compute_hausdorff_distance(percentile=95)``;
  the condition's value is the mean over images;
* classification: scikit-learn per target: ``roc_auc_score``, ``average_precision_score``,
  sensitivity at 95 % specificity from ``roc_curve(drop_intermediate=False)``, ``f1_score`` at
  0.5, ``brier_score_loss``; ``macro`` = the mean over targets;

and 95 % percentile bootstrap CIs by a Python loop over the resamples, recomputing the metric on
each (the same index matrix as medfail: ``medfail.metrics.bootstrap.bootstrap_indices`` with
the run's bootstrap seed, over the sorted ids). Conventions follow docs/metrics.md where MONAI
returns NaN: both masks empty -> Dice / NSD / boundary F1 1.0, HD95 0; one empty -> 0.0 and
HD95 = the image diagonal.

Severity: every condition is medfail severity :data:`SEVERITY`; :data:`IC_MATCH` gives the
imagecorruptions severity with the closest parameters (docs/performance.md has the table).
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEVERITY = 2
TOLERANCE_PX = 2.0
THRESHOLD = 0.5

#: medfail test at severity 2 -> (imagecorruptions name, its severity, how close they are)
IC_MATCH: dict[str, tuple[str, int, str]] = {
    "gaussian_noise": ("gaussian_noise", 1, "exact: sigma 0.08 of the range"),
    "poisson_noise": ("shot_noise", 2, "exact: 25 photons at full scale"),
    "speckle": ("speckle_noise", 3, "close: sigma 0.30 vs 0.35"),
    "gaussian_blur": ("gaussian_blur", 2, "sigma 2 px (skimage truncates at 4 sigma)"),
    "motion_blur": ("motion_blur", 1, "approximate: 9 px line vs a 21-tap one-sided streak "
                                      "(radius 10, sigma 3, imagecorruptions' mildest)"),
    "defocus": ("defocus_blur", 1, "disk radius 3 px"),
    "contrast": ("contrast", 1, "close: factor 0.5 vs 0.4"),
    "brightness": ("brightness", 2, "+0.2 of the range (imagecorruptions: HSV value)"),
    "jpeg": ("jpeg_compression", 3, "exact: JPEG quality 15"),
    "pixelate": ("pixelate", 4, "close: 3x vs 1/0.3 = 3.3x box down, nearest up"),
}

#: corrupts one uint8 (H, W) image: (image, test name, sample id) -> uint8 (H, W)
Corruptor = Callable[[np.ndarray, str, str], np.ndarray]
#: a segmenter's (C, H, W) probabilities -> the (H, W) bool lesion mask
Binariser = Callable[[np.ndarray], np.ndarray]


def argmax_mask(prob: np.ndarray) -> np.ndarray:
    """The obvious mask: ``argmax`` over the float32 class probabilities is class 1."""
    return np.argmax(prob, axis=0) == 1


def stored_mask(prob: np.ndarray) -> np.ndarray:
    """medfail's mask: the argmax over ``[1 - p, p]`` with the foreground ``p`` rounded to
    float16 as ``predictions/<condition>.npz`` stores it (``rundir.label_map``); differs from
    :func:`argmax_mask` only on pixels within a float16 step of 0.5."""
    from medfail.engine.predictions import quantise
    from medfail.rundir import label_map

    return label_map(quantise(prob)) == 1


def medfail_corruptor(seed: int) -> Corruptor:
    """medfail's ``corrupt`` at :data:`SEVERITY` with the engine's per-sample seed
    ``derive_seed(seed, condition, id)``: the inputs ``medfail run`` gives the model."""
    from medfail.seeding import derive_seed
    from medfail.stress.registry import condition_name, corrupt

    def fn(image: np.ndarray, test: str, sample_id: str) -> np.ndarray:
        cond = condition_name(test, SEVERITY)
        return corrupt(image, test, SEVERITY, seed=derive_seed(seed, cond, sample_id))

    return fn


def imagecorruptions_corruptor(ic: Any, seed: int) -> Corruptor:
    """imagecorruptions (global numpy RNG, seeded once) where :data:`IC_MATCH` has the test,
    medfail's function otherwise. imagecorruptions returns RGB; channel 0 is kept (each channel
    got the full noise; a mean of the three would divide its variance by 3)."""
    np.random.seed(seed % 2**32)
    fallback = medfail_corruptor(seed)

    def fn(image: np.ndarray, test: str, sample_id: str) -> np.ndarray:
        if test not in IC_MATCH:
            return fallback(image, test, sample_id)
        name, severity, _ = IC_MATCH[test]
        return ic.corrupt(image, severity=severity, corruption_name=name)[..., 0]

    return fn


@dataclass
class Folder:
    """A test folder read with PIL and csv: sorted ids, uint8 images, masks, labels."""

    ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    labels: np.ndarray | None  # (N, K) 0/1
    targets: list[str]


def read_folder(root: Path, task: str) -> Folder:
    from PIL import Image

    ids = sorted(p.stem for p in (root / "images").glob("*.png"))
    images = [np.asarray(Image.open(root / "images" / f"{i}.png")) for i in ids]
    if task == "segmentation":
        masks = [np.asarray(Image.open(root / "masks" / f"{i}.png")) > 0 for i in ids]
        return Folder(ids, images, masks, None, ["lesion"])
    with open(root / "labels.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    targets = [k for k in next(iter(rows.values())) if k != "id"]
    labels = np.array([[int(rows[i][t]) for t in targets] for i in ids])
    return Folder(ids, images, None, labels, targets)


def _inputs(folder: Folder, test: str, corruptor: Corruptor) -> list[np.ndarray]:
    """The model inputs of one condition: (1, H, W) float32 images, as medfail's samples."""
    if test == "clean":
        return [im[None].astype(np.float32) for im in folder.images]
    return [corruptor(im, test, sid)[None].astype(np.float32)
            for im, sid in zip(folder.images, folder.ids, strict=True)]


def _ci(stats: Sequence[float]) -> tuple[float, float]:
    """2.5 / 97.5 percentiles of the defined resample statistics (numpy's linear rule)."""
    lo, hi = np.nanpercentile(np.asarray(stats, np.float64), [2.5, 97.5])
    return float(lo), float(hi)


def _bootstrap_mean(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    return _ci([np.mean(values[row]) for row in idx])


# ----------------------------------------------------------------------------- segmentation


def segmentation_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MONAI's Dice, NSD@2px, boundary F1@2px and HD95 of one (H, W) mask pair."""
    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    if not t.any() or not p.any():  # MONAI gives NaN: docs/metrics.md conventions
        both = not t.any() and not p.any()
        return {"dice": float(both), "nsd": float(both), "boundary_f1": float(both),
                "hd95": 0.0 if both else float(np.hypot(*t.shape))}
    yp = torch.from_numpy(p[None, None].astype(np.float32))
    yt = torch.from_numpy(t[None, None].astype(np.float32))
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(yp, yt)
    nsd = compute_surface_dice(yp, yt, class_thresholds=[TOLERANCE_PX], include_background=True,
                               use_subvoxels=False)
    hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95)
    e_pred, e_true = get_mask_edges(p, t, crop=True)
    prec = np.mean(np.asarray(get_surface_distance(e_pred, e_true)) <= TOLERANCE_PX)
    rec = np.mean(np.asarray(get_surface_distance(e_true, e_pred)) <= TOLERANCE_PX)
    bf1 = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return {"dice": float(dice[0, 0]), "nsd": float(nsd[0, 0]), "boundary_f1": float(bf1),
            "hd95": float(hd[0, 0])}


SEGMENTATION = ("dice", "nsd", "boundary_f1", "hd95")


def segmentation_suite(adapter: Any, folder: Folder, tests: Sequence[str],
                       corruptor: Corruptor, idx: np.ndarray, batch_size: int,
                       binarise: Binariser = argmax_mask) -> list[dict[str, Any]]:
    """One row per condition and metric: mean over images and its bootstrap CI."""
    assert folder.masks is not None
    rows = []
    for test in ["clean", *tests]:
        images = _inputs(folder, test, corruptor)
        per_image: dict[str, list[float]] = {m: [] for m in SEGMENTATION}
        for start in range(0, len(images), batch_size):
            probs = adapter.predict_proba(images[start:start + batch_size])
            for prob, mask in zip(probs, folder.masks[start:start + batch_size], strict=True):
                values = segmentation_metrics(mask, binarise(prob))
                for m in SEGMENTATION:
                    per_image[m].append(values[m])
        for m in SEGMENTATION:
            v = np.asarray(per_image[m])
            lo, hi = _bootstrap_mean(v, idx)
            rows.append({"condition": _name(test), "target": "lesion", "metric": m,
                         "value": float(v.mean()), "ci_low": lo, "ci_high": hi})
    return rows


# --------------------------------------------------------------------------- classification


def _sens_at_95spec(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return float(tpr[fpr <= 0.05 + 1e-12].max())


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """scikit-learn metrics of one target (NaN where sklearn refuses: one class)."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    one_class = y.min() == y.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "auroc": float("nan") if one_class else float(roc_auc_score(y, p)),
            "auprc": float("nan") if not y.any() else float(average_precision_score(y, p)),
            "sens_at_95spec": float("nan") if one_class else _sens_at_95spec(y, p),
            "f1": float(f1_score(y, p >= THRESHOLD, zero_division=np.nan)),
        }


CLASSIFICATION = ("auroc", "auprc", "sens_at_95spec", "f1")


def classification_suite(adapter: Any, folder: Folder, tests: Sequence[str],
                         corruptor: Corruptor, idx: np.ndarray, batch_size: int
                         ) -> list[dict[str, Any]]:
    """One row per condition, target (and ``macro``) and metric, with bootstrap CIs; ``brier``
    (``brier_score_loss``) without a CI, as medfail's calibration table has it."""
    from sklearn.metrics import brier_score_loss

    assert folder.labels is not None
    y, targets = folder.labels, folder.targets
    rows = []
    for test in ["clean", *tests]:
        images = _inputs(folder, test, corruptor)
        prob = np.concatenate([adapter.predict_proba(images[s:s + batch_size])
                               for s in range(0, len(images), batch_size)]).astype(np.float64)
        point = {t: classification_metrics(y[:, k], prob[:, k]) for k, t in enumerate(targets)}
        draws = {t: {m: [] for m in CLASSIFICATION} for t in targets}
        for row in idx:  # the obvious bootstrap: every metric recomputed on every resample
            for k, t in enumerate(targets):
                for m, v in classification_metrics(y[row, k], prob[row, k]).items():
                    draws[t][m].append(v)
        for m in CLASSIFICATION:
            for t in targets:
                rows.append({"condition": _name(test), "target": t, "metric": m,
                             "value": point[t][m], **_ci_dict(draws[t][m])})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # all-NaN resamples
                macro = np.nanmean([draws[t][m] for t in targets], axis=0)
            rows.append({"condition": _name(test), "target": "macro", "metric": m,
                         "value": float(np.nanmean([point[t][m] for t in targets])),
                         **_ci_dict(macro)})
        for k, t in enumerate(targets):
            rows.append({"condition": _name(test), "target": t, "metric": "brier",
                         "value": float(brier_score_loss(y[:, k], prob[:, k])),
                         "ci_low": float("nan"), "ci_high": float("nan")})
    return rows


def _ci_dict(stats: Sequence[float]) -> dict[str, float]:
    lo, hi = _ci(stats)
    return {"ci_low": lo, "ci_high": hi}


def _name(test: str) -> str:
    from medfail.stress.registry import condition_name

    return "clean" if test == "clean" else condition_name(test, SEVERITY)


def run_peer(adapter: Any, data: Path, task: str, tests: Sequence[str], corruptor: Corruptor,
             n_bootstrap: int, seed: int, batch_size: int, binarise: Binariser = argmax_mask
             ) -> tuple[list[dict[str, Any]], float]:
    """The whole peer script on ``data``: (rows, wall-clock seconds), reading included.
    ``binarise``: a segmenter's probabilities -> mask (ignored for classification)."""
    from medfail.metrics.bootstrap import bootstrap_indices
    from medfail.seeding import derive_seed

    t0 = time.perf_counter()
    folder = read_folder(data, task)
    idx = bootstrap_indices(len(folder.ids), n_bootstrap, derive_seed(seed, "bootstrap"))
    if task == "segmentation":
        rows = segmentation_suite(adapter, folder, tests, corruptor, idx, batch_size, binarise)
    else:
        rows = classification_suite(adapter, folder, tests, corruptor, idx, batch_size)
    return rows, time.perf_counter() - t0
