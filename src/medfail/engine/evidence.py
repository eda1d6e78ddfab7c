"""Evidence the report needs from the images themselves.

* ``evidence.parquet`` — long table ``id, condition, feature, value``, gathered after the suite
  from the per-condition ``predictions/<condition>.evidence.parquet`` that the predictor's
  scoring thread writes (:func:`evidence_rows`, on the very images the model saw):
  input-quality features (:mod:`medfail.analysis.input_quality`) of every image under clean and
  each image stress condition (and ``shift_data``); on clean images also ``intensity_p1`` /
  ``intensity_p99`` (native units) and, with masks, ``gt_dice_erode1`` / ``gt_dice_dilate1`` (Dice
  between the ground truth and the same mask moved by one pixel: the floor of annotation
  variability) and ``dice_at_0.3`` / ``dice_at_0.5`` / ``dice_at_0.7`` (Dice of the first target's
  stored clean probabilities cut at other thresholds: threshold sensitivity).
* ``cases/`` — the chosen case studies (:mod:`medfail.analysis.case_studies`): ``cases.json`` and
  one ``case_<k>.npz`` per case with the clean and perturbed input, the ground truth, the stored
  predictions and, for classifiers, an occlusion saliency map.

Nothing here reads a model's weights; the occlusion map only calls ``predict_proba``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from medfail.analysis.case_studies import select_cases
from medfail.analysis.discovery import example_ids
from medfail.analysis.input_quality import quality_features, scaled
from medfail.analysis.run_tables import RunTables
from medfail.data.datasets import Dataset
from medfail.data.sample import Sample
from medfail.engine.predictions import condition_path, npz_array, write_table
from medfail.engine.suite import Condition, SuiteConfig
from medfail.metrics.segmentation import dice
from medfail.models.adapters import ModelAdapter
from medfail.rundir import (
    CASES_JSON,
    EVIDENCE,
    EXAMPLES,
    case_path,
    cases_dir,
    condition_file,
    table,
)
from medfail.stress.registry import perturb_samples
from medfail.stress.spec import slice_axis

IMAGE_FAMILIES = ("corruption", "domain_shift")
OCCLUSION_GRID = 8


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of one pair of masks (the project's metric: both empty -> 1.0)."""
    return float(dice(a[None], b[None])[0])


THRESHOLDS = (0.3, 0.5, 0.7)


def _clean_rows(s: Sample, foreground: np.ndarray | None) -> list[dict[str, Any]]:
    """Intensity percentiles, annotation variability and threshold sensitivity of one clean
    image (``foreground``: its stored float16 probability maps, None for classifiers)."""
    p1, p99 = np.percentile(np.asarray(s.image, np.float64), [1, 99])
    values = {"intensity_p1": float(p1), "intensity_p99": float(p99)}
    if s.mask is not None:
        gt = np.asarray(s.mask) == 1
        if gt.any():
            values["gt_dice_erode1"] = _dice(gt, ndimage.binary_erosion(gt))
            values["gt_dice_dilate1"] = _dice(gt, ndimage.binary_dilation(gt))
        if foreground is not None:
            p = foreground[0].astype(np.float32)
            values.update({f"dice_at_{t}": _dice(gt, p > t) for t in THRESHOLDS})
    return [{"id": s.id, "condition": "clean", "feature": k, "value": v}
            for k, v in values.items()]


def has_evidence(cond: Condition) -> bool:
    """Conditions whose images get quality features: clean, plain image stress tests, shift."""
    return cond.method == "plain" and cond.base is None and (
        cond.severity == 0 or cond.family in IMAGE_FAMILIES)


def evidence_rows(batch: Sequence[Sample], images: Sequence[np.ndarray], cond: Condition,
                  foreground: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One batch's rows of ``evidence.parquet`` under ``cond`` (computed by the predictor's
    scoring thread on the images the model saw, so nothing is perturbed twice)."""
    if not has_evidence(cond):
        return []
    rows = [{"id": s.id, "condition": cond.name, "feature": k, "value": v}
            for s, img in zip(batch, images, strict=True)
            for k, v in quality_features(img, s.value_range, s.spacing).items()]
    if cond.name == "clean":
        maps = foreground if foreground is not None else [None] * len(batch)
        for s, fg in zip(batch, maps, strict=True):
            rows += _clean_rows(s, fg)
    return rows


def evidence_table(run_dir: Path, conditions: Sequence[Condition], task: str) -> pd.DataFrame:
    """``evidence.parquet``: the per-condition evidence files of the run's conditions."""
    paths = [condition_file(run_dir, c.name, ".evidence.parquet")
             for c in conditions if has_evidence(c)]
    tables = [pd.read_parquet(p) for p in paths if p.exists()]
    columns = ["id", "condition", "feature", "value"]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(
        columns=columns)


def occlusion_map(adapter: ModelAdapter, image: np.ndarray, target: int,
                  grid: int = OCCLUSION_GRID) -> np.ndarray:
    """Drop in the target's probability when each of grid×grid patches is set to the image mean
    (positive = the patch supports the prediction); shape (grid, grid)."""
    base = float(adapter.predict_proba([image])[0][target])
    _, h, w = image.shape
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    occluded = []
    for i in range(grid):
        for j in range(grid):
            x = image.copy()
            x[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = image.mean()
            occluded.append(x)
    probs = np.asarray(adapter.predict_proba(occluded))[:, target]
    return (base - probs).reshape(grid, grid).astype(np.float32)


def write_cases(run_dir: Path, dataset: Dataset, adapter: ModelAdapter,
                config: SuiteConfig) -> list[dict[str, Any]]:
    """Choose the case studies and store what the report shows for each."""
    cases = select_cases(run_dir)
    cases_dir(run_dir).mkdir(exist_ok=True)
    task = adapter.spec.task
    targets = list(adapter.spec.target_names)
    for k, case in enumerate(cases):
        sample = dataset.load(case["id"])
        family = case["family"]
        perturbed = sample.image if case["severity"] == 0 or family == "prompt" else \
            perturb_samples([sample], case["condition"], config.seed)[0]
        arrays: dict[str, np.ndarray] = {"clean": sample.image.astype(np.float32),
                                         "image": np.asarray(perturbed, np.float32),
                                         "value_range": np.asarray(sample.value_range, float)}
        if task == "classification":
            t = targets.index(case["target"])
            arrays["saliency"] = occlusion_map(adapter, arrays["image"], t)
            arrays["saliency_clean"] = occlusion_map(adapter, arrays["clean"], t)
        else:
            arrays["mask"] = np.asarray(sample.mask)
            for name, cond in (("prob_clean", "clean"), ("prob", case["condition"])):
                arrays[name] = npz_array(condition_path(run_dir, cond, task), case["id"])
        np.savez_compressed(case_path(run_dir, k), **arrays)
    table(run_dir, CASES_JSON).write_text(json.dumps(cases, indent=2))
    return cases


def write_evidence(run_dir: Path, dataset: Dataset, adapter: ModelAdapter, config: SuiteConfig,
                   conditions: Sequence[Condition], calibration: Dataset | None = None) -> None:
    """Write ``evidence.parquet`` (from the conditions' evidence files) and ``cases/``
    (case studies and the discovery / label-issue example thumbnails)."""
    write_table(evidence_table(run_dir, conditions, adapter.spec.task),
                table(run_dir, EVIDENCE))
    write_cases(run_dir, dataset, adapter, config)
    write_examples(run_dir, {"test": dataset, "calibration": calibration})


#: longest side of an example thumbnail (pixels)
THUMB_PX = 96


def thumbnail(sample: Sample) -> np.ndarray:
    """A small grey uint8 picture of a sample: the first channel scaled to [0, 255] by its
    value range (clipped); volumes: the middle plane across the slice axis; at most
    :data:`THUMB_PX` on the longer side (bilinear)."""
    from PIL import Image

    x = np.clip(scaled(sample.image, sample.value_range), 0.0, 1.0)
    if x.ndim == 3:
        axis = slice_axis(sample.spacing)
        x = np.take(x, x.shape[axis] // 2, axis=axis)
    img = Image.fromarray(np.round(x * 255).astype(np.uint8))
    scale = THUMB_PX / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img)


def write_examples(run_dir: Path, datasets: dict[str, Dataset | None]) -> None:
    """``cases/examples.npz``: one thumbnail per sample chosen by
    :func:`medfail.analysis.discovery.example_ids`, keyed ``<split>__<id>``."""
    tables = RunTables(run_dir)
    chosen = example_ids(tables.discovery, tables.discovery_features, tables.label_issues)
    arrays = {f"{split}__{sid}": thumbnail(ds.load(sid))
              for split, ids in chosen.items() if (ds := datasets.get(split)) is not None
              for sid in ids}
    np.savez_compressed(table(run_dir, EXAMPLES), **arrays)
