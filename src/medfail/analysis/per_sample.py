"""Per-sample metric rows (the ``per_sample.parquet`` table) from stored predictions.

Segmentation: ``dice``, ``jaccard`` and ``boundary_f1`` per image and foreground class
(target = class name), computed at the mask's native resolution from the stored float16 maps.
Classification: ``brier`` per image and target, ``(p - y)^2``; set-level metrics (AUROC...) are
computed in :mod:`medfail.analysis.aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medfail.engine.predictions import label_map
from medfail.metrics.classification import brier_per_sample
from medfail.metrics.segmentation import boundary_f1, dice, jaccard

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "jaccard", "boundary_f1")
CLASSIFICATION_METRICS: tuple[str, ...] = ("auroc", "auprc", "sens_at_95spec", "f1")


def segmentation_rows(sample_id: str, foreground: np.ndarray, mask: np.ndarray,
                      targets: Sequence[str], tolerance_px: float) -> list[dict[str, object]]:
    """Metric rows for one image: stored foreground maps vs the integer GT mask."""
    pred = label_map(foreground)
    if pred.shape != mask.shape:
        raise ValueError(f"{sample_id}: prediction {pred.shape} vs mask {mask.shape}")
    rows: list[dict[str, object]] = []
    for k, target in enumerate(targets, start=1):
        t, p = (mask == k)[None], (pred == k)[None]
        values = {
            "dice": dice(t, p)[0],
            "jaccard": jaccard(t, p)[0],
            "boundary_f1": boundary_f1(t, p, tolerance=tolerance_px)[0],
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
