"""Slice membership: which samples belong to which slice.

Slice names are ``kind=value`` strings (``size=small``, ``site=B``); ``all`` is the whole set.

* ``size``: ``small`` / ``large`` by GT foreground area (mm² when every sample has a spacing,
  else px), split at ``size_threshold`` (default: the median area of non-empty masks);
  ``none`` for empty masks.
* ``location``: ``central`` when the foreground centroid lies within half of the half-diagonal
  of the image centre (``centre_offset < 0.5``), else ``peripheral``.
* ``shape``: ``hollow`` / ``solid`` (an object encloses background), and ``objects=1`` /
  ``objects=2+``.
* ``metadata``: every text/boolean column of ``metadata.csv`` with 2-20 distinct values (site,
  protocol, scanner...) and numeric columns with 2-5 distinct values; numeric columns with more
  levels (areas, ages) are not sliced.

A sample can be in several slices; slices with fewer than ``min_slice_n`` samples are kept and
flagged (``small_slice``), never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MAX_LEVELS = 20
MAX_NUMERIC_LEVELS = 5
SKIP_COLUMNS = {"id", "pixel_spacing"}


def size_threshold(index: pd.DataFrame, unit: str) -> float:
    col = "gt_area_mm2" if unit == "mm2" else "gt_area_px"
    areas = index.loc[index["gt_area_px"] > 0, col]
    return float(areas.median()) if len(areas) else float("nan")


def mask_slices(index: pd.DataFrame, kinds: Sequence[str], threshold: float | None,
                unit: str) -> pd.DataFrame:
    """Membership rows ``(id, slice)`` from the GT features in ``index``."""
    if "gt_area_px" not in index or index["gt_area_px"].isna().all():
        return pd.DataFrame(columns=["id", "slice"])
    rows: list[tuple[str, str]] = []
    col = "gt_area_mm2" if unit == "mm2" else "gt_area_px"
    thr = size_threshold(index, unit) if threshold is None else threshold
    for r in index.itertuples():
        empty = r.gt_area_px == 0
        if "size" in kinds:
            rows.append((r.id, "size=none" if empty else
                         f"size={'small' if getattr(r, col) < thr else 'large'}"))
        if empty:
            continue
        if "location" in kinds:
            rows.append((r.id, f"location={'central' if r.centre_offset < 0.5 else 'peripheral'}"))
        if "shape" in kinds:
            rows.append((r.id, f"shape={'hollow' if r.hollow else 'solid'}"))
            rows.append((r.id, f"objects={'1' if r.n_objects == 1 else '2+'}"))
    return pd.DataFrame(rows, columns=["id", "slice"])


def metadata_slices(metadata: pd.DataFrame) -> pd.DataFrame:
    """Membership rows from categorical metadata columns (2-20 levels)."""
    rows: list[tuple[str, str]] = []
    if metadata is None or metadata.empty:
        return pd.DataFrame(columns=["id", "slice"])
    meta = metadata.reset_index() if "id" not in metadata.columns else metadata
    for col in meta.columns:
        if col in SKIP_COLUMNS:
            continue
        values = meta[col]
        levels = values.dropna().unique()
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if not 2 <= len(levels) <= (MAX_NUMERIC_LEVELS if numeric else MAX_LEVELS):
            continue
        for sid, v in zip(meta["id"], values, strict=True):
            if pd.notna(v):
                rows.append((str(sid), f"{col}={_level(v)}"))
    return pd.DataFrame(rows, columns=["id", "slice"])


def _level(v: object) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def slice_membership(index: pd.DataFrame, metadata: pd.DataFrame | None, kinds: Sequence[str],
                     threshold: float | None, unit: str) -> pd.DataFrame:
    """All membership rows ``(id, slice)`` for the requested slice kinds."""
    parts = [mask_slices(index, kinds, threshold, unit)]
    if "metadata" in kinds and metadata is not None:
        parts.append(metadata_slices(metadata))
    out = pd.concat(parts, ignore_index=True).drop_duplicates()
    return out.sort_values(["slice", "id"]).reset_index(drop=True)
