"""Calibration and selective prediction for segmenters.

Per-pixel calibration: every pixel's foreground probability against the GT, summarised per
condition and class in 15 equal-width bins ``[b/15, (b+1)/15)`` (last bin closed) — counts, sum of
probabilities and sum of labels (``predictions/<condition>.pixel_bins.parquet``), from which
``pixel_ece = Σ_b (n_b / N) |mean label_b - mean prob_b|`` and reliability diagrams follow. No
sampling. Two regions: ``all`` pixels (dominated by easy background, so the ECE is tiny) and
``band`` = pixels whose Euclidean distance (between pixel centres, in px whatever the spacing) to
the nearest GT or predicted (``p > 0.5``) foreground pixel is at most 5 px, foreground included:
``distance_transform_edt(~(gt | pred)) <= 5`` (:func:`band_mask`; empty when both are empty),
where the decisions are (``pixel_ece_band``, the figure to read).

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


def _binned(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    idx = np.minimum((p * N_PIXEL_BINS).astype(np.int64), N_PIXEL_BINS - 1)
    return np.stack([
        np.bincount(idx, minlength=N_PIXEL_BINS).astype(np.float64),
        np.bincount(idx, weights=p.astype(np.float64), minlength=N_PIXEL_BINS),
        np.bincount(idx, weights=y.astype(np.float64), minlength=N_PIXEL_BINS)])


def sampling_agreement(p: np.ndarray, spread: np.ndarray) -> float:
    """Minus the mean spread (std over TTA / MC-dropout passes) inside the predicted mask (whole
    image when empty): higher = the passes agree more."""
    pred = p > 0.5
    region = pred if pred.any() else np.ones_like(pred)
    return float(-np.asarray(spread, np.float64)[region].mean())


def band_mask(truth: np.ndarray, pred: np.ndarray, band_px: float = BAND_PX) -> np.ndarray:
    """Pixels within ``band_px`` (Euclidean, px) of a foreground pixel of ``truth`` or ``pred``
    (those pixels included); all False when both are empty. The same distance as the boundary
    metrics use (``scipy.ndimage.distance_transform_edt``), not the city-block distance that
    ``binary_dilation(iterations=5)`` gives."""
    fg = np.asarray(truth, bool) | np.asarray(pred, bool)
    if not fg.any():
        return np.zeros(fg.shape, bool)
    return ndimage.distance_transform_edt(~fg) <= band_px


def add_pixel_bins(bins: dict[tuple[str, str], np.ndarray], target: str, p: np.ndarray,
                   truth: np.ndarray) -> None:
    """Accumulate (count, sum p, sum y) per bin of one image, for regions ``all`` and ``band``
    (:func:`band_mask` of the GT and ``p > 0.5``)."""
    band = band_mask(truth, p > 0.5)
    for region, sel in (("all", slice(None)), ("band", band.ravel())):
        stats = _binned(p.ravel()[sel], truth.ravel()[sel])
        key = (target, region)
        bins[key] = bins[key] + stats if key in bins else stats


def pixel_bin_table(bins: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    rows = [{"target": t, "region": r, "bin": b, "count": s[0, b], "sum_prob": s[1, b],
             "sum_label": s[2, b]} for (t, r), s in bins.items() for b in range(N_PIXEL_BINS)]
    return pd.DataFrame(rows, columns=["target", "region", "bin", "count", "sum_prob",
                                       "sum_label"])


def pixel_ece(table: pd.DataFrame) -> float:
    """ECE from binned sufficient statistics of one target."""
    n = table["count"].to_numpy(float)
    if n.sum() == 0:
        return float("nan")
    ok = n > 0
    gap = np.abs(table["sum_label"].to_numpy(float)[ok] - table["sum_prob"].to_numpy(float)[ok])
    return float(gap.sum() / n.sum())


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
        for (target, region), grp in bins.groupby(["target", "region"], sort=False):
            rows.append({**meta, "target": target, "method": "pixel",
                         "metric": "pixel_ece" if region == "all" else f"pixel_ece_{region}",
                         "value": pixel_ece(grp), "n": int(grp["count"].sum())})
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
