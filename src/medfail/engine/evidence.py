"""Evidence the report needs from the images themselves, computed once after the suite.

* ``evidence.parquet`` — long table ``id, condition, feature, value``, streamed in batches:
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
from tqdm.auto import tqdm

from medfail.analysis.case_studies import select_cases
from medfail.analysis.input_quality import quality_features
from medfail.data.datasets import Dataset
from medfail.data.sample import Sample
from medfail.engine.predictions import condition_path, write_table
from medfail.engine.suite import Condition, SuiteConfig
from medfail.models.adapters import ModelAdapter
from medfail.stress.corruptions import perturb_samples

IMAGE_FAMILIES = ("corruption", "domain_shift")
OCCLUSION_GRID = 8


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


THRESHOLDS = (0.3, 0.5, 0.7)


def _clean_rows(s: Sample, clean_probs: Any) -> list[dict[str, Any]]:
    """Intensity percentiles, annotation variability and threshold sensitivity of one image."""
    p1, p99 = np.percentile(np.asarray(s.image, np.float64), [1, 99])
    values = {"intensity_p1": float(p1), "intensity_p99": float(p99)}
    if s.mask is not None:
        gt = np.asarray(s.mask) == 1
        if gt.any():
            values["gt_dice_erode1"] = _dice(gt, ndimage.binary_erosion(gt))
            values["gt_dice_dilate1"] = _dice(gt, ndimage.binary_dilation(gt))
        if clean_probs is not None:
            p = clean_probs[s.id][0].astype(np.float32)
            values.update({f"dice_at_{t}": _dice(gt, p > t) for t in THRESHOLDS})
    return [{"id": s.id, "condition": "clean", "feature": k, "value": v}
            for k, v in values.items()]


def _quality_rows(batch: list[Sample], images: Sequence[np.ndarray],
                  condition: str) -> list[dict[str, Any]]:
    return [{"id": s.id, "condition": condition, "feature": k, "value": v}
            for s, img in zip(batch, images, strict=True)
            for k, v in quality_features(img, s.value_range).items()]


def evidence_table(run_dir: Path, dataset: Dataset, conditions: Sequence[Condition],
                   config: SuiteConfig, task: str, shift: Dataset | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """The rows of ``evidence.parquet`` (see the module docstring)."""
    stress = [c for c in conditions if c.method == "plain" and c.base is None
              and c.family in IMAGE_FAMILIES and c.severity > 0]
    rows: list[dict[str, Any]] = []
    clean_probs = np.load(condition_path(run_dir, "clean", task)) \
        if task != "classification" else None
    n_batches = -(-len(dataset) // config.batch_size)
    for batch in tqdm(dataset.batches(config.batch_size), total=n_batches, leave=False,
                      desc="  input quality", unit="batch", disable=not progress):
        rows += _quality_rows(batch, [s.image for s in batch], "clean")
        for s in batch:
            rows += _clean_rows(s, clean_probs)
        for cond in stress:
            rows += _quality_rows(batch, perturb_samples(batch, cond.name, config.seed), cond.name)
    if shift is not None:
        for batch in shift.batches(config.batch_size):
            rows += _quality_rows(batch, [s.image for s in batch], "shift_data")
    return pd.DataFrame(rows, columns=["id", "condition", "feature", "value"])


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
    out = run_dir / "cases"
    out.mkdir(exist_ok=True)
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
                arrays[name] = np.load(condition_path(run_dir, cond, task))[case["id"]]
        np.savez_compressed(out / f"case_{k}.npz", **arrays)
    (out / "cases.json").write_text(json.dumps(cases, indent=2))
    return cases


def write_evidence(run_dir: Path, dataset: Dataset, adapter: ModelAdapter, config: SuiteConfig,
                   conditions: Sequence[Condition], shift: Dataset | None = None,
                   progress: bool = False) -> None:
    """Write ``evidence.parquet`` and ``cases/`` (see the module docstring)."""
    write_table(evidence_table(run_dir, dataset, conditions, config, adapter.spec.task, shift,
                               progress), run_dir / "evidence.parquet")
    write_cases(run_dir, dataset, adapter, config)
