"""Per-sample metric rows (the ``per_sample.parquet`` table) from stored predictions.

Segmentation: ``dice``, ``jaccard``, ``boundary_f1`` (τ in px, always), ``nsd`` and ``hd95`` (τ
and distances in mm when every sample has a pixel spacing, else px; hd95 clamped to the image
diagonal when one mask is empty; ``run.json: metric_units`` records each metric's tolerance and
unit, :func:`medfail.engine.predictions.metric_units`) and lesion counts ``lesion_tp/fn/fp``
per image and foreground class (target = class name), computed at the mask's native resolution
from the stored float16 maps.
Classification: ``brier`` per image and target, ``(p - y)^2``; set-level metrics (AUROC...) are
computed in :mod:`medfail.analysis.aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medfail.metrics.classification import brier_per_sample
from medfail.metrics.detection import lesion_counts
from medfail.metrics.segmentation import boundary_f1, dice, hd95, jaccard, nsd
from medfail.rundir import label_map

SEGMENTATION_METRICS: tuple[str, ...] = (
    "dice", "jaccard", "boundary_f1", "nsd", "hd95", "lesion_f1", "lesion_sensitivity",
    "lesion_precision")
CLASSIFICATION_METRICS: tuple[str, ...] = ("auroc", "auprc", "sens_at_95spec", "f1")


def segmentation_rows(sample_id: str, foreground: np.ndarray, mask: np.ndarray,
                      targets: Sequence[str], tolerance_px: float,
                      spacing: Sequence[float] | None = None, surface_tolerance: float = 2.0,
                      min_overlap: float = 0.1) -> list[dict[str, object]]:
    """Metric rows for one image: stored foreground maps vs the integer GT mask.

    ``spacing``: when given, ``nsd`` (tolerance ``surface_tolerance`` mm) and ``hd95`` are in mm;
    otherwise in px (``nsd`` tolerance ``tolerance_px``). ``boundary_f1``: tolerance
    ``tolerance_px`` in px for 2D images (Boundary-F1@2px); for volumes with a spacing,
    ``surface_tolerance`` in mm (Boundary-F1@2mm), in voxels (``tolerance_px``) without one.
    """
    pred = label_map(foreground)
    if pred.shape != mask.shape:
        raise ValueError(f"{sample_id}: prediction {pred.shape} vs mask {mask.shape}")
    rows: list[dict[str, object]] = []
    for k, target in enumerate(targets, start=1):
        t, p = (mask == k)[None], (pred == k)[None]
        sp = tuple(spacing) if spacing is not None else (1.0,) * mask.ndim
        boundary_mm = spacing is not None and mask.ndim == 3
        diagonal = float(np.linalg.norm(np.array(mask.shape) * np.array(sp)))
        tp, fn, fp = lesion_counts(t, p, min_overlap=min_overlap)[0]
        values = {
            "dice": dice(t, p)[0],
            "jaccard": jaccard(t, p)[0],
            "boundary_f1": (boundary_f1(t, p, tolerance=surface_tolerance, spacing=spacing)[0]
                            if boundary_mm else boundary_f1(t, p, tolerance=tolerance_px)[0]),
            "nsd": nsd(t, p, tolerance=surface_tolerance if spacing is not None
                       else tolerance_px, spacing=spacing)[0],
            "hd95": hd95(t, p, spacing=spacing, max_distance=diagonal)[0],
            "lesion_tp": tp, "lesion_fn": fn, "lesion_fp": fp,
        }
        rows += [{"id": sample_id, "target": target, "metric": m, "value": float(v)}
                 for m, v in values.items()]
    return rows


def classification_rows(pred: pd.DataFrame) -> pd.DataFrame:
    """Per-sample ``brier`` rows from a long predictions table (id, target, prob, label)."""
    out = pred[["id", "target"]].copy()
    out["metric"] = "brier"
    out["value"] = brier_per_sample(pred["label"].to_numpy(), pred["prob"].to_numpy())
    return out
