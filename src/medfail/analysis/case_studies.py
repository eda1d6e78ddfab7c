"""Choose the report's case studies from a run directory: confidently wrong, one per cause.

Rule: walk the significant breaking conditions in ranking order; in each, take the image the model
got most *confidently* wrong although it was right on the clean image:

* segmentation: score = (Dice_clean − Dice_condition) · confidence, with confidence the image's
  ``mask_confidence`` (mean max-probability inside the predicted mask) and Dice_clean ≥ 0.5;
* classification: score = probability given to the wrong answer, over (image, target) pairs that
  the clean image got right at the run's decision threshold.

A case is kept only when its cause (:mod:`medfail.analysis.causes`) and its image differ from the
cases already kept, so two noise tests never fill both slots. When fewer than ``n`` causes break the
model, the remaining slots take the most confidently wrong clean images (a failure with no
perturbation at all: cause ``slice``).

Volumes are shown in three orthogonal views through the failure (:func:`failure_point`,
:func:`orthogonal_views`): the centre of the largest error component.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from medfail import rundir
from medfail.analysis.causes import CAUSES, cause_of
from medfail.analysis.ranking import PRIMARY_METRIC

MAX_CONDITIONS = 8
MIN_CLEAN_DICE = 0.5


def _segmentation_candidates(run_dir: Path, per_sample: pd.DataFrame, condition: str,
                             target: str) -> pd.DataFrame:
    dice = per_sample[(per_sample["metric"] == "dice") & (per_sample["target"] == target)]
    clean = dice[dice["condition"] == "clean"].set_index("id")["value"]
    cond = dice[dice["condition"] == condition].set_index("id")["value"]
    conf = pd.read_parquet(rundir.condition_file(run_dir, condition, ".confidence.parquet"))
    conf = conf[(conf["target"] == target) & (conf["signal"] == "mask_confidence")]
    table = pd.DataFrame({"clean_value": clean, "value": cond,
                          "confidence": conf.set_index("id")["value"]}).dropna()
    if condition != "clean":
        table = table[table["clean_value"] >= MIN_CLEAN_DICE]
        table["score"] = (table["clean_value"] - table["value"]) * table["confidence"]
    else:
        table["score"] = (1.0 - table["value"]) * table["confidence"]
    table["target"], table["metric"] = target, "dice"
    return table.reset_index(names="id")


def _classification_candidates(run_dir: Path, condition: str,
                               thresholds: dict[str, float] | float) -> pd.DataFrame:
    pred = pd.read_parquet(rundir.condition_path(run_dir, condition, "classification"))
    clean = pd.read_parquet(rundir.condition_path(run_dir, "clean", "classification"))
    merged = pred.merge(clean[["id", "target", "prob"]], on=["id", "target"],
                        suffixes=("", "_clean"))
    per_target = rundir.per_target_thresholds(thresholds, merged["target"].unique())
    thr = merged["target"].map(per_target).astype(float)
    wrong = (merged["prob"] >= thr) != (merged["label"] == 1)
    clean_right = (merged["prob_clean"] >= thr) == (merged["label"] == 1)
    keep = wrong & (clean_right if condition != "clean" else True)
    table = merged[keep].copy()
    table["score"] = np.where(table["label"] == 1, 1.0 - table["prob"], table["prob"])
    return pd.DataFrame({"id": table["id"], "target": table["target"], "metric": "prob",
                         "value": table["prob"], "clean_value": table["prob_clean"],
                         "label": table["label"], "confidence": table["score"],
                         "score": table["score"]})


def select_cases(run_dir: str | Path, n: int = 2) -> list[dict[str, Any]]:
    """Up to ``n`` case studies: dicts with ``id, condition, test, family, severity, target,
    metric, value, clean_value, confidence, score, cause`` (+ ``label`` for classification)."""
    run_dir = Path(run_dir)
    run = json.loads(rundir.table(run_dir, rundir.RUN_JSON).read_text())
    task = run["task"]
    ranking = pd.read_parquet(rundir.table(run_dir, rundir.RANKING))
    top = ranking[(ranking["kind"] == "condition") & ranking["significant"]].head(MAX_CONDITIONS)
    per_sample = pd.read_parquet(rundir.table(run_dir, rundir.PER_SAMPLE)) \
        if task != "classification" else None
    if per_sample is not None:
        targets = list(dict.fromkeys(per_sample.loc[per_sample["metric"] == "dice", "target"]))
        target = str(ranking["target"].iloc[0]) if len(ranking) else targets[0]
        target = target if target in targets else targets[0]
    conditions = [(str(r.name), str(r.test), str(r.family), int(r.severity))
                  for r in top.itertuples()]
    conditions.append(("clean", "clean", "clean", 0))
    chosen: list[dict[str, Any]] = []
    causes_used: set[str] = set()
    for name, test, family, severity in conditions:
        if name == "shift_data":  # other patients: no paired clean image to compare with
            continue
        cause = cause_of(test, family).name if name != "clean" else "slice"
        if cause in causes_used and name != "clean":
            continue
        if task == "classification":
            table = _classification_candidates(run_dir, name, run["thresholds"])
        else:
            assert per_sample is not None
            table = _segmentation_candidates(run_dir, per_sample, name, target)
        table = table[~table["id"].isin({c["id"] for c in chosen}) & (table["score"] > 0)]
        while len(table) and len(chosen) < n:
            row = table.sort_values(["score", "id"], ascending=[False, True]).iloc[0]
            chosen.append({**{k: (v.item() if hasattr(v, "item") else v)
                              for k, v in row.to_dict().items()},
                           "condition": name, "test": test, "family": family,
                           "severity": severity, "cause": cause, "primary": PRIMARY_METRIC[task]})
            causes_used.add(cause)
            if name != "clean":
                break
            table = table[table["id"] != row["id"]]
        if len(chosen) >= n:
            break
    return chosen


def _sample_value(t: Any, condition: str, sid: str, target: str, metric: str) -> float | None:
    """One image's metric under ``condition`` (classification: the target's probability)."""
    if t.task == "classification":
        path = rundir.condition_path(t.run_dir, condition, "classification")
        if not path.exists():
            return None
        p = pd.read_parquet(path)
        row = p[(p["id"] == sid) & (p["target"] == target)]
        return None if row.empty else float(row["prob"].iloc[0])
    ps = t.per_sample
    row = ps[(ps["condition"] == condition) & (ps["id"] == sid) & (ps["target"] == target)
             & (ps["metric"] == metric)]
    return None if row.empty else float(row["value"].iloc[0])


def diagnose(t: Any, case: dict[str, Any], deferral_threshold: float | None) -> dict[str, str]:
    """The case study's text: what happened, why, what helps (measured) and what remains.

    ``t`` is a :class:`medfail.analysis.run_tables.RunTables`; ``deferral_threshold`` the
    checklist's confidence threshold (cases under it are referred to a human).
    """
    cause = CAUSES["slice"] if case["condition"] == "clean" else cause_of(case["test"],
                                                                           case["family"])
    slices = pd.read_parquet(rundir.table(t.run_dir, rundir.SLICES))
    member = ", ".join(slices.loc[slices["id"] == case["id"], "slice"]) or "none"
    cond, sid, target = case["condition"], case["id"], case["target"]
    if t.task == "classification":
        thr = rundir.per_target_thresholds(t.run["thresholds"], [target])[target]
        what = (f"label {case['label']} for {target}; probability {case['clean_value']:.3f} on "
                f"the clean image → {case['value']:.3f} under {cond} (decision threshold "
                f"{thr:.2f}): wrong with confidence {case['confidence']:.3f}")
    else:
        gt_objects = [_sample_value(t, "clean", sid, target, m) for m in ("lesion_tp", "lesion_fn")]
        empty = all(v == 0 for v in gt_objects)
        what = (f"Dice {case['clean_value']:.3f} on the clean image → {case['value']:.3f} under "
                f"{cond}, with mask confidence {case['confidence']:.3f}"
                + ("; the ground truth has no lesion, so the model predicts one where there is "
                   "none (false positive)" if empty else ""))
    helps = []
    m = t.mitigations
    if m is not None and cond != "clean":
        rows = m[(m["base"] == cond) & (m["slice"] == "all")]
        for r in rows.drop_duplicates("mitigation").itertuples():
            after = _sample_value(t, f"{r.mitigation}|{cond}", sid, target, case["metric"]) \
                if r.mitigation in ("tta", "morphology") else None
            own = f"this case {case['value']:.3f} → {after:.3f}; " if after is not None else ""
            ci = "" if np.isnan(r.ci_low) else f" [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            helps.append(f"{r.mitigation}: {own}over all images {r.metric} {r.before:.3f} → "
                         f"{r.after:.3f}{ci}, "
                         f"{'helps' if r.helps else 'does not help significantly'}")
    if not helps:
        helps.append(f"no mitigation was measured on {cond} (mitigations run on the top "
                     "breaking condition)")
    conf_now = case["confidence"] if t.task != "classification" else max(case["value"],
                                                                         1 - case["value"])
    if deferral_threshold is not None:
        referred = conf_now < deferral_threshold
        helps.append(f"deferral (confidence < {deferral_threshold:.3f}): this case "
                     f"{'would' if referred else 'would NOT'} be referred "
                     f"(confidence {conf_now:.3f})")
    if t.task == "classification":
        p = t.predictions(cond)
        p = p[p["target"] == target]
        wrong = float(((p["prob"] >= thr) != (p["label"] == 1)).mean())
        residual = f"under {cond}, {wrong:.0%} of {target} decisions are wrong"
    else:
        ps = t.per_sample
        d = ps[(ps["condition"] == cond) & (ps["metric"] == "dice") & (ps["target"] == target)]
        residual = f"under {cond}, {float((d['value'] < 0.5).mean()):.0%} of images have Dice < 0.5"
    return {"title": f"{sid} under {cond} — {cause.bucket} › {cause.entry}",
            "what": what, "slices": member, "why": cause.why, "helps": "; ".join(helps),
            "residual": residual + (" before any mitigation" if cond != "clean" else "")}


#: The three orthogonal planes of a canonical RAS+ volume ``(X, Y, Z)``: name -> fixed axis.
VIEWS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


def failure_point(mask: np.ndarray, prob: np.ndarray, level: float = 0.5) -> tuple[int, ...]:
    """The voxel the case's views cut through: in the largest fully connected component of the
    error ``(prob >= level) != (mask == 1)`` (26-connected in 3D; ties: scipy's raster order),
    the voxel nearest the component's centroid (a ring-shaped error's centroid can lie outside
    it). Without error: the ground truth's, else the prediction's, else the array's centre."""
    gt = np.asarray(mask) == 1
    pred = np.asarray(prob, np.float32) >= level
    for region in (gt != pred, gt, pred):
        if region.any():
            labels, n = ndimage.label(region, ndimage.generate_binary_structure(region.ndim,
                                                                                region.ndim))
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            voxels = np.argwhere(labels == int(np.argmax(sizes)) + 1)
            centroid = voxels.mean(axis=0)
            nearest = voxels[int(np.argmin(((voxels - centroid) ** 2).sum(axis=1)))]
            return tuple(int(v) for v in nearest)
    return tuple(int(n) // 2 for n in np.shape(mask))


def plane(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """One plane of a canonical RAS+ ``(X, Y, Z)`` array as displayed, radiological convention:
    axial ``(Y, X)`` with anterior up and the patient's right on the left; coronal ``(Z, X)``
    with superior up, right on the left; sagittal ``(Z, Y)`` with superior up, anterior on the
    left. Display row ``i``, column ``j`` = the plane's ``[-1 - j, -1 - i]``."""
    cut = np.take(np.asarray(volume), index, axis=VIEWS[view])
    return np.ascontiguousarray(cut[::-1, ::-1].T)


def plane_aspect(spacing: tuple[float, ...] | None, view: str) -> float:
    """Display aspect (row spacing / column spacing) of :func:`plane`'s output; 1 without
    spacing."""
    if spacing is None or len(spacing) != 3:
        return 1.0
    rows_cols = [a for a in (2, 1, 0) if a != VIEWS[view]]  # display rows, then columns
    return float(spacing[rows_cols[0]]) / float(spacing[rows_cols[1]])


def orthogonal_views(arrays: dict[str, np.ndarray],
                     spacing: tuple[float, ...] | None = None) -> dict[str, dict[str, Any]]:
    """A volume case's three views through :func:`failure_point` of its stressed prediction.

    ``arrays`` holds what ``cases/case_<k>.npz`` stores for segmentation: ``clean`` and ``image``
    ``(C, X, Y, Z)``, ``mask`` ``(X, Y, Z)``, ``prob`` and ``prob_clean`` ``(T, X, Y, Z)``
    (target 0 is shown). Returns, per view name, ``index`` (the plane), ``point`` (the failure
    point's display ``(row, column)``), ``aspect`` and the planes ``clean``, ``image``
    (channel 0), ``mask``, ``prob``, ``prob_clean``."""
    prob = np.asarray(arrays["prob"][0], np.float32)
    point = failure_point(arrays["mask"], prob)
    volumes = {"clean": np.asarray(arrays["clean"])[0], "image": np.asarray(arrays["image"])[0],
               "mask": np.asarray(arrays["mask"]), "prob": prob,
               "prob_clean": np.asarray(arrays["prob_clean"][0], np.float32)}
    out: dict[str, dict[str, Any]] = {}
    for view, axis in VIEWS.items():
        shape = [n for a, n in enumerate(np.shape(arrays["mask"])) if a != axis]
        rest = [p for a, p in enumerate(point) if a != axis]  # plane coordinates (u, v)
        out[view] = {"index": point[axis], "aspect": plane_aspect(spacing, view),
                     "point": (shape[1] - 1 - rest[1], shape[0] - 1 - rest[0]),
                     **{k: plane(v, view, point[axis]) for k, v in volumes.items()}}
    return out
