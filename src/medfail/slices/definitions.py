"""Slice membership: which samples belong to which slice.

Slice names are ``source.key=value``; the source says where the definition comes from, so two
definitions never share a name (a ground-truth rule and a metadata column both called
``location`` stay two slices; ``scan.slice_thickness`` from the voxel spacing and a
``slice_thickness`` metadata column too). ``all`` is the whole set.

Ground-truth rules (``gt.``), from the GT mask features of :mod:`medfail.slices.features`:

* ``gt.size``: ``small`` / ``large`` by GT foreground area (mm² when every sample has a
  spacing, else px), split at ``size_threshold`` (default: the median area of non-empty
  masks); ``none`` for empty masks. Volumes (index rows with ``gt_volume_ml``): by GT
  foreground volume in mL, ``small`` below :data:`SMALL_LESION_ML` = 0.5236 mL (the volume of
  a 10 mm diameter sphere: sub-centimetre lesions are small); with a ``size_threshold``, or
  when a volume has no spacing, by voxel count as above.
* ``gt.location``: ``central`` when the foreground centroid lies within half of the
  half-diagonal of the image (volume) centre (``centre_offset < 0.5``), else ``peripheral``.
* ``gt.shape``: ``hollow`` / ``solid`` (an object encloses background), and ``gt.objects``:
  ``1`` / ``2+``. Images with an empty mask are only in ``gt.size=none``.

Metadata columns (``meta.``): one slice per distinct value of every column of
``metadata.csv`` (except ``id``) that has

* text or boolean values: 2-20 distinct values (``meta.site=B``, ``meta.location=central``);
* numbers (integer or float, ``pixel_spacing`` included): 2-5 distinct values
  (``meta.pixel_spacing=0.7``, ``meta.grade=2``; integral floats are written as integers).
  Numeric columns with 6 or more distinct values (areas, ages, continuous spacings) are not
  sliced: :func:`unsliced_columns` says which and why.

Scan geometry (``scan.``, with the ``metadata`` kind, volumes only): ``scan.slice_thickness``,
the largest voxel spacing of each volume in mm (the slice axis), under the numeric rule above
(2-5 distinct values, else not sliced). It is the voxel spacing; a reconstructed thickness
that differs from it belongs in a metadata column (``meta.slice_thickness``).

Missing values belong to no slice. A sample can be in several slices; slices with fewer than
``min_slice_n`` samples are kept and flagged (``small_slice``), never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

GT = "gt"
META = "meta"
SCAN = "scan"
#: Volumes: GT foreground below this is ``gt.size=small`` (a 10 mm sphere, 4/3 pi 5^3 mm^3).
SMALL_LESION_ML = 4 / 3 * np.pi * 5.0**3 / 1000.0
MAX_LEVELS = 20
MAX_NUMERIC_LEVELS = 5
SKIP_COLUMNS = {"id"}


def slice_name(source: str, key: str, value: object) -> str:
    """``source.key=value``, e.g. ``slice_name("meta", "site", "B") == "meta.site=B"``."""
    return f"{source}.{key}={value}"


def parse_slice(name: str) -> tuple[str, str, str]:
    """``(source, key, value)`` of a slice name: ``"gt.size=small"`` -> ``("gt", "size",
    "small")``; ``("", "all", "")`` for the whole set."""
    head, sep, value = name.partition("=")
    if not sep:
        return "", name, ""
    source, dot, key = head.partition(".")
    return (source, key, value) if dot else ("", head, value)


def size_threshold(index: pd.DataFrame, unit: str) -> float:
    """The default ``gt.size`` split: :data:`SMALL_LESION_ML` for ``unit="ml"``, else the
    median of the non-empty masks' ``gt_area_mm2`` (``"mm2"``) or ``gt_area_px``."""
    if unit == "ml":
        return SMALL_LESION_ML
    col = "gt_area_mm2" if unit == "mm2" else "gt_area_px"
    areas = index.loc[index["gt_area_px"] > 0, col]
    return float(areas.median()) if len(areas) else float("nan")


def size_unit(index: pd.DataFrame, threshold: float | None, unit: str) -> str:
    """The unit ``gt.size`` compares in: ``"ml"`` for volumes that all have a volume in mL and
    no explicit threshold; ``"px"`` (voxels) for other volumes; ``unit`` for 2D images."""
    if "gt_volume_ml" not in index or index["gt_volume_ml"].isna().all():
        return unit
    has_ml = bool(index.loc[index["gt_area_px"] > 0, "gt_volume_ml"].notna().all())
    return "ml" if has_ml and threshold is None else "px"


def slice_thickness_slices(index: pd.DataFrame) -> pd.DataFrame:
    """``scan.slice_thickness=<mm>`` rows: the largest voxel spacing of each volume (3 spatial
    spacings in the index's ``spacing`` column), when 2-5 distinct values occur."""
    if "spacing" not in index:
        return pd.DataFrame(columns=["id", "slice"])
    thick = {str(sid): float(max(sp)) for sid, sp in zip(index["id"], index["spacing"],
                                                         strict=True)
             if sp is not None and not _missing(sp) and len(sp) == 3}
    if not 2 <= len(set(thick.values())) <= MAX_NUMERIC_LEVELS:
        return pd.DataFrame(columns=["id", "slice"])
    rows = [(sid, slice_name(SCAN, "slice_thickness", _level(t))) for sid, t in thick.items()]
    return pd.DataFrame(rows, columns=["id", "slice"])


def _missing(value: object) -> bool:
    return isinstance(value, float) and np.isnan(value)


def mask_slices(index: pd.DataFrame, kinds: Sequence[str], threshold: float | None,
                unit: str) -> pd.DataFrame:
    """Membership rows ``(id, slice)`` from the index: ``gt.`` slices from its GT features and,
    with the ``metadata`` kind, ``scan.`` slices from the volumes' spacing."""
    scan = slice_thickness_slices(index) if "metadata" in kinds else None
    if "gt_area_px" not in index or index["gt_area_px"].isna().all():
        return scan if scan is not None else pd.DataFrame(columns=["id", "slice"])
    rows: list[tuple[str, str]] = []
    unit = size_unit(index, threshold, unit)
    col = {"ml": "gt_volume_ml", "mm2": "gt_area_mm2"}.get(unit, "gt_area_px")
    thr = size_threshold(index, unit) if threshold is None else threshold
    for r in index.itertuples():
        empty = r.gt_area_px == 0
        if "size" in kinds:
            size = "none" if empty else ("small" if getattr(r, col) < thr else "large")
            rows.append((r.id, slice_name(GT, "size", size)))
        if empty:
            continue
        if "location" in kinds:
            where = "central" if r.centre_offset < 0.5 else "peripheral"
            rows.append((r.id, slice_name(GT, "location", where)))
        if "shape" in kinds:
            rows.append((r.id, slice_name(GT, "shape", "hollow" if r.hollow else "solid")))
            rows.append((r.id, slice_name(GT, "objects", "1" if r.n_objects == 1 else "2+")))
    out = pd.DataFrame(rows, columns=["id", "slice"])
    return out if scan is None or not len(scan) else pd.concat([out, scan], ignore_index=True)


def _with_id(metadata: pd.DataFrame) -> pd.DataFrame:
    meta = metadata.reset_index() if "id" not in metadata.columns else metadata
    dup = meta.columns[meta.columns.duplicated()].tolist()
    if dup:
        raise ValueError(f"metadata has duplicate column(s) {', '.join(map(str, dup))}: each "
                         "column must be named once to name its slices")
    return meta


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _level(v: object) -> str:
    """A value as written in a slice name: integral floats as integers (``2.0`` -> ``2``),
    other floats by their shortest round-trip repr at their own precision (``0.7``), everything
    else by ``str``."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.floating):
        return str(v)  # shortest repr at the value's own precision: float32 0.7 -> "0.7"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, np.integer | np.bool_):
        return str(v.item())
    return str(v)


def _levels(values: pd.Series) -> list[object]:
    return list(pd.unique(values.dropna()))


def unsliced_columns(metadata: pd.DataFrame | None) -> dict[str, str]:
    """``{column: reason}`` for the metadata columns :func:`metadata_slices` does not slice."""
    if metadata is None or metadata.empty:
        return {}
    meta = _with_id(metadata)
    out = {}
    for col in meta.columns:
        if col in SKIP_COLUMNS:
            continue
        n, numeric = len(_levels(meta[col])), _is_numeric(meta[col])
        limit = MAX_NUMERIC_LEVELS if numeric else MAX_LEVELS
        if n < 2:
            out[str(col)] = f"{n} distinct value{'s' if n != 1 else ''}"
        elif n > limit:
            out[str(col)] = (f"{n} distinct {'numeric' if numeric else 'text'} values "
                             f"(more than {limit})")
    return out


def metadata_slices(metadata: pd.DataFrame | None) -> pd.DataFrame:
    """Membership rows ``(id, slice)`` from metadata columns (``meta.`` slices): text/boolean
    columns with 2-20 distinct values, numeric (integer or float) columns with 2-5.

    Raises:
        ValueError: duplicate column names, or two distinct values of one column that would
            be written alike (e.g. ``1`` and ``"1"`` in an object column).
    """
    rows: list[tuple[str, str]] = []
    if metadata is None or metadata.empty:
        return pd.DataFrame(columns=["id", "slice"])
    meta = _with_id(metadata)
    skipped = unsliced_columns(meta)
    for col in meta.columns:
        if col in SKIP_COLUMNS or str(col) in skipped:
            continue
        values = meta[col]
        written: dict[str, object] = {}
        for v in _levels(values):
            other = written.setdefault(_level(v), v)
            if other is not v and other != v:
                raise ValueError(f"metadata column '{col}': values {other!r} and {v!r} would "
                                 f"both name slice {slice_name(META, col, _level(v))}")
        for sid, v in zip(meta["id"], values.to_numpy(), strict=True):  # numpy scalars
            if pd.notna(v):
                rows.append((str(sid), slice_name(META, str(col), _level(v))))
    return pd.DataFrame(rows, columns=["id", "slice"])


def slice_membership(index: pd.DataFrame, metadata: pd.DataFrame | None, kinds: Sequence[str],
                     threshold: float | None, unit: str) -> pd.DataFrame:
    """All membership rows ``(id, slice)`` for the requested slice kinds, sorted by slice, id.

    ``gt.`` and ``meta.`` names cannot collide, so every slice name has one definition."""
    parts = [mask_slices(index, kinds, threshold, unit)]
    if "metadata" in kinds and metadata is not None:
        parts.append(metadata_slices(metadata))
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    out = out.drop_duplicates()
    return out.sort_values(["slice", "id"]).reset_index(drop=True)
