"""Calibration and selective prediction for segmenters.

Per-pixel calibration: every pixel's (voxel's) foreground probability against the GT, summarised
per condition and class in 15 equal-width bins ``[b/15, (b+1)/15)`` (last bin closed) — count,
sum of probabilities, sum of labels, sum of squared probabilities and sum of probability × label
(``predictions/<condition>.pixel_bins.parquet``, columns ``count, sum_prob, sum_label,
sum_prob_sq, sum_prob_label``), from which

* ``pixel_ece = Σ_b |Σ_b y − Σ_b p| / N`` (= ``Σ_b (n_b / N) |mean label_b − mean prob_b|``),
* ``pixel_brier = (Σ p² − 2 Σ p·y + Σ y) / N`` (= the mean of ``(p − y)²``, as y² = y; exact,
  no sampling: ``sklearn.metrics.brier_score_loss`` on the flattened pixels)

and reliability diagrams follow. The sums are accumulated one image (volume) at a time and, within
a volume, over chunks of voxels, so no more than one volume's maps are ever held. 2-D ``(H, W)``
and 3-D ``(X, Y, Z)`` maps alike. Two regions: ``all`` pixels (dominated by easy background, so
the ECE is tiny) and ``band`` = pixels whose Euclidean distance (between pixel/voxel centres, **in
px/voxels whatever the spacing**) to the nearest GT or predicted (``p > 0.5``) foreground pixel is
at most 5, foreground included: ``distance_transform_edt(~(gt | pred)) <= 5`` (:func:`band_mask`;
empty when both are empty), where the decisions are (``pixel_ece_band``, ``pixel_brier_band``:
the figures to read). In voxels, not mm, so that 2-D and 3-D, and images with and without a
spacing, use one rule (``run.json: metric_units: pixel_ece_band``); on a (0.8, 0.8, 2.5) mm volume
the band reaches 4 mm in-plane and 12.5 mm across slices.

Per-image confidence signals (``predictions/<condition>.confidence.parquet``), computed at
inference from the stored float16 map ``p`` of each class:

* ``mean_max_prob`` = mean over pixels of ``max(p, 1 - p)``;
* ``mask_confidence`` = mean ``p`` inside the predicted mask (``p > 0.5``), or mean ``1 - p`` over
  the image when nothing is predicted;
* ``mask_entropy`` = minus the mean binary entropy (nats, float64, ``−p ln p − (1−p) ln(1−p)``
  without clipping: 0 at p = 0 or 1) inside the predicted mask (whole image when empty), so
  higher = more confident;
* ``sampling_agreement`` (TTA and MC-dropout conditions only) = minus the mean standard deviation
  across passes inside the predicted mask.

Selective prediction defers whole images: residual = ``1 - dice``; ``aurc``, ``eaurc``,
``augrc``, ``risk_at_80`` (mean 1 - Dice of the 80 % most confident images),
``coverage_at_risk_10`` (largest share of images kept with mean 1 - Dice ≤ 0.10), ``dice_all`` and
``dice_at_80`` (mean Dice over all vs over the kept images), and ``acceptable_at_80`` (share of
kept images with Dice ≥ 0.8, a "case acceptable" rate). The kept images are the
``ceil(0.8 N)`` most confident of ALL images of the condition (plus ties with the last), chosen
from the confidence signal alone: the ground truth (empty or not) never decides what is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from medfail import rundir
from medfail.analysis.calibration import COVERAGE
from medfail.metrics.selective import (
    augrc,
    aurc,
    coverage_at_risk,
    eaurc,
    risk_at_coverage,
    risk_coverage_curve,
    selective_metric,
)
from medfail.uncertainty.temperature import entropy_binary

N_PIXEL_BINS = 15
TARGET_RISK = 0.10
ACCEPTABLE_DICE = 0.8
SIGNALS = ("mean_max_prob", "mask_confidence", "mask_entropy")


def image_confidences(p: np.ndarray) -> dict[str, float]:
    """The per-image confidence signals of one foreground probability map."""
    pred = p > 0.5
    region = pred if pred.any() else np.ones_like(pred)
    return {
        "mean_max_prob": float(np.maximum(p, 1 - p).mean()),
        "mask_confidence": float(p[pred].mean()) if pred.any() else float((1 - p).mean()),
        "mask_entropy": float(-entropy_binary(p[region]).mean()),
    }


BAND_PX = 5


#: The per-bin sums stored in ``pixel_bins.parquet``, in the order of ``_binned``'s rows.
BIN_COLUMNS = ("count", "sum_prob", "sum_label", "sum_prob_sq", "sum_prob_label")
#: Voxels binned at a time: the float64 temporaries stay about 10 MB whatever the volume size.
_CHUNK = 1 << 18


def _binned(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(len(BIN_COLUMNS), N_PIXEL_BINS)`` float64 sums of one image's flat ``p`` and ``y``:
    count, Σp, Σy, Σp², Σp·y per bin (bin ``min(floor(15 p), 14)``), in chunks of voxels."""
    out = np.zeros((len(BIN_COLUMNS), N_PIXEL_BINS))
    for start in range(0, p.size, _CHUNK):
        pc = p[start:start + _CHUNK].astype(np.float64)
        yc = y[start:start + _CHUNK].astype(np.float64)
        idx = np.minimum((pc * N_PIXEL_BINS).astype(np.int64), N_PIXEL_BINS - 1)
        for row, w in enumerate((None, pc, yc, pc * pc, pc * yc)):
            out[row] += np.bincount(idx, weights=w, minlength=N_PIXEL_BINS)
    return out


def sampling_agreement(p: np.ndarray, spread: np.ndarray) -> float:
    """Minus the mean spread (std over TTA / MC-dropout passes) inside the predicted mask (whole
    image when empty): higher = the passes agree more."""
    pred = p > 0.5
    region = pred if pred.any() else np.ones_like(pred)
    return float(-np.asarray(spread, np.float64)[region].mean())


def band_mask(truth: np.ndarray, pred: np.ndarray, band_px: float = BAND_PX) -> np.ndarray:
    """Pixels (voxels) within ``band_px`` (Euclidean, in px / voxels, whatever the spacing) of a
    foreground pixel of ``truth`` or ``pred`` (those pixels included); all False when both are
    empty. 2-D or 3-D. The same distance as the boundary metrics use
    (``scipy.ndimage.distance_transform_edt``), not the city-block distance that
    ``binary_dilation(iterations=5)`` gives. The transform runs on the foreground's bounding
    box grown by ``floor(band_px) + 1`` (nothing outside it is within the band), so a small
    lesion in a large volume costs little."""
    fg = np.asarray(truth, bool) | np.asarray(pred, bool)
    out = np.zeros(fg.shape, bool)
    if not fg.any():
        return out
    margin = int(np.floor(band_px)) + 1
    box = tuple(slice(max(int(c.min()) - margin, 0), int(c.max()) + margin + 1)
                for c in np.nonzero(fg))
    out[box] = ndimage.distance_transform_edt(~fg[box]) <= band_px
    return out


def add_pixel_bins(bins: dict[tuple[str, str], np.ndarray], target: str, p: np.ndarray,
                   truth: np.ndarray) -> None:
    """Add one image's (volume's) sums (``BIN_COLUMNS`` per bin) to ``bins[(target, region)]``
    for regions ``all`` and ``band`` (:func:`band_mask` of the GT and ``p > 0.5``).

    ``p``: foreground probabilities, ``truth``: the GT mask of the class, same shape (2-D or
    3-D). Streaming: call once per image; only that image's maps are held.
    """
    p = np.asarray(p)
    truth = np.asarray(truth, bool)
    if p.shape != truth.shape:
        raise ValueError(f"probability map {p.shape} and mask {truth.shape} differ in shape")
    band = band_mask(truth, p > 0.5)
    for region, (pr, tr) in (("all", (p.ravel(), truth.ravel())),
                             ("band", (p[band], truth[band]))):
        stats = _binned(pr, tr)
        key = (target, region)
        bins[key] = bins[key] + stats if key in bins else stats


def pixel_bin_table(bins: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """``pixel_bins.parquet``: one row per target, region and bin with the ``BIN_COLUMNS``."""
    rows = [{"target": t, "region": r, "bin": b,
             **{c: s[k, b] for k, c in enumerate(BIN_COLUMNS)}}
            for (t, r), s in bins.items() for b in range(N_PIXEL_BINS)]
    return pd.DataFrame(rows, columns=["target", "region", "bin", *BIN_COLUMNS])


def pixel_ece(table: pd.DataFrame) -> float:
    """ECE from binned sufficient statistics of one target and region:
    ``Σ_b |Σ_b y − Σ_b p| / N``; NaN without pixels."""
    n = table["count"].to_numpy(float)
    if n.sum() == 0:
        return float("nan")
    ok = n > 0
    gap = np.abs(table["sum_label"].to_numpy(float)[ok] - table["sum_prob"].to_numpy(float)[ok])
    return float(gap.sum() / n.sum())


def pixel_brier(table: pd.DataFrame) -> float:
    """Per-pixel Brier score from the binned sums of one target and region:
    ``(Σp² − 2Σp·y + Σy) / N`` = mean ``(p − y)²`` over the pixels (y ∈ {0, 1}, so y² = y);
    NaN without pixels, or for tables written before the ``sum_prob_sq`` / ``sum_prob_label``
    columns existed."""
    if not {"sum_prob_sq", "sum_prob_label"} <= set(table.columns):
        return float("nan")
    n = table["count"].to_numpy(float).sum()
    if n == 0:
        return float("nan")
    total = (table["sum_prob_sq"].to_numpy(float).sum()
             - 2.0 * table["sum_prob_label"].to_numpy(float).sum()
             + table["sum_label"].to_numpy(float).sum())
    return float(max(total, 0.0) / n)


def signal_dice(confidence: pd.DataFrame, dice: pd.DataFrame, condition: str,
                target: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``signal -> (confidence, Dice)`` per image of one condition and target, aligned by id
    (in ``per_sample`` order): ``confidence`` = the stored ``<condition>.confidence.parquet``
    rows, ``dice`` = ``per_sample`` rows of metric ``dice``. The image-level residual is
    ``1 − Dice``."""
    d = dice[(dice["metric"] == "dice") & (dice["condition"] == condition)
             & (dice["target"] == target)].set_index("id")["value"]
    out = {}
    for signal, sg in confidence[confidence["target"] == target].groupby("signal", sort=False):
        out[str(signal)] = (sg.set_index("id")["value"].reindex(d.index).to_numpy(float),
                            d.to_numpy(float))
    return out


def image_risk_coverage(confidence: pd.DataFrame, dice: pd.DataFrame, condition: str,
                        target: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``signal -> (coverage, selective risk)``: images kept by each confidence signal, risk =
    mean ``1 − Dice`` of the kept images (:func:`signal_dice`,
    :func:`medfail.metrics.selective.risk_coverage_curve`)."""
    out = {}
    for signal, (c, v) in signal_dice(confidence, dice, condition, target).items():
        coverage, risk, _ = risk_coverage_curve(c, 1.0 - v)
        out[signal] = (coverage, risk)
    return out


def segmentation_calibration_table(run_dir: Path, conditions: Sequence[Any],
                                   per_sample: pd.DataFrame) -> pd.DataFrame:
    """Rows ``condition, test, family, severity, target, method, metric, value, n``.

    ``conditions``: objects with ``name, test, family, severity`` (the engine's conditions).
    """
    rows: list[dict[str, object]] = []
    dice = per_sample[per_sample["metric"] == "dice"]
    for cond in conditions:
        meta = {"condition": cond.name, "test": cond.test, "family": cond.family,
                "severity": cond.severity}
        bins = pd.read_parquet(rundir.condition_file(run_dir, cond.name, ".pixel_bins.parquet"))
        conf = pd.read_parquet(rundir.condition_file(run_dir, cond.name, ".confidence.parquet"))
        has_brier = {"sum_prob_sq", "sum_prob_label"} <= set(bins.columns)
        for (target, region), grp in bins.groupby(["target", "region"], sort=False):
            suffix = "" if region == "all" else f"_{region}"
            values = {"pixel_ece": pixel_ece(grp)}
            if has_brier:  # older runs' pixel_bins lack the sums Brier needs
                values["pixel_brier"] = pixel_brier(grp)
            rows += [{**meta, "target": target, "method": "pixel", "metric": f"{m}{suffix}",
                      "value": v, "n": int(grp["count"].sum())} for m, v in values.items()]
        for target in dict.fromkeys(bins["target"]):
            for signal, (c, v) in signal_dice(conf, dice, cond.name, target).items():
                r = 1.0 - v
                values = {"aurc": aurc(c, r), "eaurc": eaurc(c, r), "augrc": augrc(c, r),
                          "risk_at_80": risk_at_coverage(c, r, COVERAGE),
                          "coverage_at_risk_10": coverage_at_risk(c, r, TARGET_RISK),
                          "dice_all": float(v.mean()),
                          "dice_at_80": selective_metric(c, v, COVERAGE),
                          "acceptable_at_80": selective_metric(
                              c, (v >= ACCEPTABLE_DICE).astype(float), COVERAGE)}
                rows += [{**meta, "target": target, "method": signal, "metric": m,
                          "value": float(x), "n": len(v)} for m, x in values.items()]
    return pd.DataFrame(rows, columns=["condition", "test", "family", "severity", "target",
                                       "method", "metric", "value", "n"])
