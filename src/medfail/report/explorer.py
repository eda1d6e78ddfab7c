"""Write ``explorer.html``: every scored image × condition as one sortable, filterable table.

Self-contained (no network): the rows are one embedded JSON blob rendered by plain JavaScript a
page at a time (fast at 10,000+ rows), and the segmentation thumbnails (predicted map, ground
truth, error overlay) are small PNGs embedded as data URIs for a bounded set of rows
(:data:`N_WORST` worst primary-metric rows plus up to :data:`N_CLEAN` clean rows). Input images are
not stored in the run directory (privacy: only the report's case studies keep theirs), so the
input image is shown only for the case-study rows. See docs/report.md ("Explorer").
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfail.analysis.run_tables import RunTables
from medfail.errors import MedfailInputError
from medfail.rundir import (
    CASES_JSON,
    EXPLORER_HTML,
    SLICES,
    case_path,
    condition_file,
    condition_path,
    read_table,
    split_paths,
    write_atomic,
)
from medfail.rundir import table as run_file

#: thumbnails for the rows with the worst primary metric (all conditions) ...
N_WORST = 300
#: ... plus the first clean rows (by id) up to this many
N_CLEAN = 100
#: thumbnail side in pixels (nearest-neighbour scaled; the longer side)
THUMB_PX = 96
#: primary metrics where a larger value is worse
LOWER_IS_BETTER = {"hd95", "brier", "ece"}
KEYS = ["id", "condition", "test", "family", "severity"]


def _png(rgb: np.ndarray) -> str:
    """A deterministic PNG data URI of an ``(H, W, 3)`` uint8 array (stdlib zlib only)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _plane(a: np.ndarray, pick: np.ndarray | None = None) -> np.ndarray:
    """A 2-D view: volumes give the slice along the first axis with the most ``pick``."""
    a = np.asarray(a, dtype=np.float32)
    while a.ndim > 2:
        if pick is not None and pick.ndim == a.ndim:
            k = int(np.argmax(pick.reshape(pick.shape[0], -1).sum(axis=1)))
            pick = pick[k]
        else:
            k = a.shape[0] // 2
            pick = pick[k] if pick is not None and pick.ndim == a.ndim else pick
        a = a[k]
    return a


def _scaled(rgb: np.ndarray) -> np.ndarray:
    """Nearest-neighbour to about :data:`THUMB_PX` on the longer side (up or down)."""
    side = max(rgb.shape[:2])
    if side > THUMB_PX:
        step = math.ceil(side / THUMB_PX)
        return np.ascontiguousarray(rgb[::step, ::step])
    f = max(1, THUMB_PX // side)
    return np.repeat(np.repeat(rgb, f, axis=0), f, axis=1)


def _grey(a: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    g = np.zeros(a.shape) if hi <= lo else (a - lo) / (hi - lo)
    return _scaled(np.repeat((np.nan_to_num(g) * 255).astype(np.uint8)[..., None], 3, axis=2))


def _thumbs(prob: np.ndarray, gt: np.ndarray) -> dict[str, str]:
    """Predicted foreground probability, ground truth and the error overlay (TP white, FP
    red, FN blue) of one image."""
    fg = np.asarray(prob, dtype=np.float32)
    fg = fg.max(axis=0) if fg.ndim == np.asarray(gt).ndim + 1 else fg  # (C, ...) channels
    truth = np.asarray(gt) > 0
    p, t = _plane(fg, truth), _plane(truth.astype(np.float32), truth) > 0.5
    pred = p > 0.5
    err = np.zeros((*p.shape, 3), dtype=np.uint8)
    err[pred & t] = (235, 235, 235)
    err[pred & ~t] = (220, 40, 40)
    err[~pred & t] = (40, 90, 230)
    return {"prediction": _grey(np.clip(p, 0, 1) if p.max() <= 1 else p),
            "ground truth": _grey(t.astype(np.float32)), "error (FP red, FN blue)": _scaled(err)}


def _number(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def explorer_rows(per_sample: pd.DataFrame, slices: pd.DataFrame | None = None,
                  extra: pd.DataFrame | None = None) -> dict[str, Any]:
    """One row per (id, condition) of ``per_sample.parquet`` (long: one value per target and
    metric): ``columns`` (metric columns named ``metric`` or ``target:metric`` when there are
    several targets), ``rows`` (lists in column order) and ``metrics`` (the metric columns).
    ``extra`` adds columns keyed by (id, condition) (confidence, probabilities)."""
    missing = [c for c in [*KEYS, "target", "metric", "value"] if c not in per_sample.columns]
    if missing:
        raise MedfailInputError(f"per_sample.parquet: missing column(s) {', '.join(missing)}")
    ps = per_sample.copy()
    several = ps["target"].nunique() > 1
    ps["column"] = (ps["target"].astype(str) + ":" + ps["metric"].astype(str)) if several \
        else ps["metric"].astype(str)
    ps = ps.drop_duplicates([*KEYS, "column"])
    values = ps.set_index([*KEYS, "column"])["value"].unstack("column")
    values.columns.name = None
    metric_cols = list(dict.fromkeys(ps["column"]))
    keys = ps[KEYS].drop_duplicates()  # rows in per_sample.parquet's order
    wide = keys.merge(values[metric_cols].reset_index(), on=KEYS, how="left")
    if extra is not None and len(extra):
        wide = wide.merge(extra, on=["id", "condition"], how="left")
    if slices is not None and len(slices):
        joined = slices.groupby("id", sort=True)["slice"].agg(lambda s: " ".join(sorted(s)))
        wide["slices"] = wide["id"].map(joined).fillna("")
    else:
        wide["slices"] = ""
    columns = list(wide.columns)
    rows = [[_number(v) for v in r] for r in wide.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows, "metrics": metric_cols}


def _extra(tables: RunTables, conditions: list[str]) -> pd.DataFrame | None:
    """Confidence per (id, condition): segmentation the stored ``mask_confidence`` signal (else
    the first signal) of the primary target; classification the probability and label per
    target, ``correct`` at 0.5 and ``confidence`` = max(p, 1-p) of the primary target."""
    parts = []
    for cond in conditions:
        try:
            path = condition_path(tables.run_dir, cond, "classification") \
                if tables.task == "classification" \
                else condition_file(tables.run_dir, cond, ".confidence.parquet")
            if not path.exists():
                continue
            p = tables.predictions(cond) if tables.task == "classification" \
                else tables.confidence(cond)
        except MedfailInputError:
            continue
        if tables.task == "classification":
            several = p["target"].nunique() > 1
            w = pd.DataFrame({"id": p["id"].drop_duplicates()})
            for tgt, g in p.groupby("target", sort=False):
                name = f"{tgt}:" if several else ""
                g = g.drop_duplicates("id").set_index("id")
                w[f"{name}prob"] = w["id"].map(g["prob"])
                w[f"{name}label"] = w["id"].map(g["label"])
                w[f"{name}correct"] = w["id"].map(
                    ((g["prob"] > 0.5).astype(int) == g["label"]).astype(int))
            prim = p[p["target"] == tables.target] if (p["target"] == tables.target).any() \
                else p[p["target"] == p["target"].iloc[0]]
            prim = prim.drop_duplicates("id").set_index("id")["prob"]
            w["confidence"] = w["id"].map(np.maximum(prim, 1 - prim))
        else:
            sig = p[p["target"] == tables.target] if (p["target"] == tables.target).any() else p
            name = "mask_confidence" if (sig["signal"] == "mask_confidence").any() \
                else str(sig["signal"].iloc[0])
            sig = sig[sig["signal"] == name].drop_duplicates("id")
            w = pd.DataFrame({"id": sig["id"], "confidence": sig["value"].to_numpy()})
        w["condition"] = cond
        parts.append(w)
    return pd.concat(parts, ignore_index=True) if parts else None


def _thumbnail_rows(data: dict[str, Any], primary_col: str | None, worse_high: bool) -> list[int]:
    """Row numbers that get thumbnails: the :data:`N_WORST` worst by the primary metric, then
    clean rows (by id) up to :data:`N_CLEAN`."""
    cols = data["columns"]
    if primary_col is None or primary_col not in cols:
        return []
    k, c = cols.index(primary_col), cols.index("condition")
    scored = [(r[k], i) for i, r in enumerate(data["rows"]) if r[k] is not None]
    scored.sort(key=lambda t: (-t[0], t[1]) if worse_high else (t[0], t[1]))
    chosen = [i for _, i in scored[:N_WORST]]
    clean = sorted((data["rows"][i][0], i) for i in range(len(data["rows"]))
                   if data["rows"][i][c] == "clean")
    taken = set(chosen)
    chosen += [i for _, i in clean[:N_CLEAN] if i not in taken]
    return sorted(chosen)


def _case_images(run_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    """The stored case-study inputs: (id, condition) and (id, clean) → image."""
    out: dict[tuple[str, str], np.ndarray] = {}
    path = run_file(run_dir, CASES_JSON)
    if not path.exists():
        return out
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return out
    for k, case in enumerate(cases if isinstance(cases, list) else []):
        npz = case_path(run_dir, k)
        if not npz.exists():
            continue
        with np.load(npz) as z:
            if "image" in z.files:
                out[(str(case.get("id")), str(case.get("condition")))] = _plane(z["image"])
            if "clean" in z.files:
                out[(str(case.get("id")), "clean")] = _plane(z["clean"])
    return out


def explorer_data(run_dir: str | Path) -> dict[str, Any]:
    """The explorer's JSON payload for a run directory: :func:`explorer_rows` plus ``task``,
    ``primary`` (column), ``thumbnails`` (row number → [name, PNG data URI] pairs), ``rule``
    and ``why`` (the texts the page shows)."""
    tables = RunTables(Path(run_dir))
    run_dir = tables.run_dir
    ps = tables.per_sample
    conditions = list(dict.fromkeys(ps["condition"].astype(str)))
    slices_path = run_file(run_dir, SLICES)
    slices = read_table(slices_path) if slices_path.exists() else None
    data = explorer_rows(ps, slices, _extra(tables, conditions))
    task, primary = tables.task, tables.primary
    several = ps["target"].nunique() > 1
    primary_col = f"{tables.target}:{primary}" if several else primary
    if primary_col not in data["columns"]:
        primary_col = next((c for c in data["metrics"] if c.endswith(primary)),
                           data["metrics"][0] if data["metrics"] else None)
    worse_high = (primary_col or "").split(":")[-1] in LOWER_IS_BETTER
    thumbs: dict[str, list[list[str]]] = {}
    if task != "classification":
        chosen = _thumbnail_rows(data, primary_col, worse_high)
        by_cond: dict[str, list[int]] = {}
        for i in chosen:
            by_cond.setdefault(data["rows"][i][1], []).append(i)
        cases = _case_images(run_dir)
        for cond, idx in by_cond.items():
            gt_path = split_paths(run_dir, cond)["ground_truth"]  # shift_data: its own split
            gt_path = gt_path if gt_path.exists() else split_paths(run_dir)["ground_truth"]
            path = condition_file(run_dir, cond, ".npz")
            if not (path.exists() and gt_path.exists()):
                continue
            with np.load(path) as pred, np.load(gt_path) as gt:
                for i in idx:
                    sid = data["rows"][i][0]
                    if sid not in pred.files or sid not in gt.files:
                        continue
                    images = [[k, _png(v)] for k, v in _thumbs(pred[sid], gt[sid]).items()]
                    if (sid, cond) in cases:
                        images.insert(0, ["input image (case study)",
                                          _png(_grey(cases[(sid, cond)]))])
                    thumbs[str(i)] = images
        rule = (f"Thumbnails (predicted map, ground truth, error overlay) are embedded for the "
                f"{N_WORST} rows with the worst {primary_col} and up to {N_CLEAN} clean rows "
                f"(first by id); other rows say so when opened.")
        why = ("Input images are not stored in the run directory (patient privacy: the report "
               "embeds only its case studies), so the predicted map, the ground truth and the "
               "error overlay (FP red, FN blue) are shown instead.")
    else:
        rule = "No thumbnails: classification rows show the label, probability and correctness."
        why = ("Input images are not stored in the run directory (patient privacy: the report "
               "embeds only its case studies); per target the label, the predicted probability "
               "and whether it is correct at 0.5 are shown instead.")
    return {**data, "task": task, "primary": primary_col, "worse_high": worse_high,
            "thumbnails": thumbs, "rule": rule, "why": why, "n_thumb": len(thumbs)}


def render_html(data: dict[str, Any], title: str = "medfail explorer") -> str:
    """The self-contained page for an :func:`explorer_data` payload."""
    template = resources.files("medfail.report").joinpath("templates/explorer.html")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False, sort_keys=True)
    blob = blob.replace("</", "<\\/").replace("<!--", "<\\!--")
    page = template.read_text(encoding="utf-8")
    return page.replace("__TITLE__", title).replace("__DATA__", blob)


def render_explorer(run_dir: str | Path) -> Path:
    """Write ``explorer.html`` into the run directory (atomically) and return its path."""
    run_dir = Path(run_dir)
    data = explorer_data(run_dir)
    out = run_file(run_dir, EXPLORER_HTML)
    write_atomic(out, render_html(data, f"medfail explorer: {len(data['rows'])} rows"))
    return out
