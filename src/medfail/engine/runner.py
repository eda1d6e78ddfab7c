"""The runner: validate -> (perturb -> predict -> store) per condition -> aggregate -> report.

Inference happens once per condition; everything after reads the run directory. Each finished
condition is kept on disk (``predictions/<condition>.*`` and ``.parts/<condition>.parquet``,
written atomically), so a crash never loses finished results and a re-run with the same model,
data and options recomputes only the conditions that are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import medfail
from medfail.analysis.aggregate import aggregate_classification, aggregate_per_image
from medfail.analysis.per_sample import classification_rows, segmentation_rows
from medfail.data.datasets import Dataset
from medfail.data.prompts import Prompt, prompts_from_mask
from medfail.data.sample import Sample
from medfail.engine.predictions import (
    MapWriter,
    condition_path,
    quantise,
    write_table,
)
from medfail.engine.suite import Condition, SuiteConfig
from medfail.errors import MedfailInputError
from medfail.models.adapters import ModelAdapter
from medfail.stress.corruptions import perturb_samples

PARTS = ".parts"
PACKAGES = ("medfail", "torch", "monai", "numpy", "scipy", "scikit-image", "scikit-learn",
            "pandas", "pyarrow", "pydicom", "nibabel", "pillow", "onnxruntime", "matplotlib")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor(),
            "system": platform.system(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cache_key(model_info: dict[str, Any], data_hash: str, task: str,
               config: SuiteConfig) -> str:
    """Identity of what finished conditions depend on; without a model hash nothing is reused
    (a model known only by name may have changed since)."""
    if not model_info.get("sha256"):
        return "uncacheable-" + os.urandom(8).hex()
    cfg = config.to_dict()
    cfg.pop("tests")
    cfg.pop("severities")
    blob = json.dumps({"model": model_info["sha256"],
                       "data": data_hash, "task": task, "config": cfg,
                       "medfail": medfail.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_compatible(adapter: ModelAdapter, dataset: Dataset) -> None:
    spec = adapter.spec
    if spec.task == "classification" and list(dataset.target_names) != list(spec.target_names):
        raise MedfailInputError(
            getattr(dataset, "root", None),
            f"labels have targets {list(dataset.target_names)} but the model predicts "
            f"{list(spec.target_names)}")


class _Predictor:
    """Runs one condition over the dataset in streamed batches and stores what it produced."""

    def __init__(self, adapter: ModelAdapter, dataset: Dataset, run_dir: Path,
                 config: SuiteConfig) -> None:
        self.adapter, self.dataset, self.run_dir, self.config = adapter, dataset, run_dir, config
        self.task = adapter.spec.task
        self.targets = list(adapter.spec.target_names)

    def images(self, batch: list[Sample], cond: Condition) -> list[np.ndarray]:
        if cond.severity == 0:
            return [s.image for s in batch]
        return perturb_samples(batch, cond.name, self.config.seed)

    def run(self, cond: Condition, progress: bool) -> pd.DataFrame:
        out_path = condition_path(self.run_dir, cond.name, self.task)
        writer = MapWriter(out_path) if self.task != "classification" else None
        rows: list[Any] = []
        n_batches = -(-len(self.dataset) // self.config.batch_size)
        try:
            for batch in tqdm(self.dataset.batches(self.config.batch_size), total=n_batches,
                              desc=f"  {cond.name}", unit="batch", leave=False,
                              disable=not progress):
                images = self.images(batch, cond)
                if self.task == "classification":
                    rows.append(self._classify(batch, images, cond))
                else:
                    rows += self._segment(batch, images, writer)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
            per_sample = pd.DataFrame(rows)
        else:
            pred = pd.concat(rows, ignore_index=True)
            write_table(pred, out_path)
            per_sample = classification_rows(pred)
        for key, value in (("condition", cond.name), ("test", cond.test),
                           ("family", cond.family), ("severity", cond.severity)):
            per_sample[key] = value
        return per_sample

    def _classify(self, batch: list[Sample], images: list[np.ndarray],
                  cond: Condition) -> pd.DataFrame:
        probs = self.adapter.predict_proba(images)
        labels = np.stack([self._one_hot(s) for s in batch])
        k = len(self.targets)
        return pd.DataFrame({
            "id": np.repeat([s.id for s in batch], k), "condition": cond.name,
            "test": cond.test, "family": cond.family, "severity": cond.severity,
            "target": np.tile(self.targets, len(batch)),
            "prob": probs.reshape(-1).astype(np.float64), "label": labels.reshape(-1)})

    def _one_hot(self, s: Sample) -> np.ndarray:
        label = np.asarray(s.label)
        if self.adapter.spec.multi_label:
            return label.astype(np.int64).reshape(-1)
        return np.eye(len(self.targets), dtype=np.int64)[int(label.reshape(-1)[0])]

    def _segment(self, batch: list[Sample], images: list[np.ndarray],
                 writer: MapWriter | None) -> list[dict[str, object]]:
        if self.task == "promptable":
            probs = self.adapter.predict_proba(images, [self.prompts(s) for s in batch])
        else:
            probs = self.adapter.predict_proba(images)
        rows: list[dict[str, object]] = []
        for s, p in zip(batch, probs, strict=True):
            fg = quantise(p)
            assert writer is not None
            writer.add(s.id, fg)
            rows += segmentation_rows(s.id, fg, s.mask, self.targets,
                                      self.config.boundary_tolerance_px)
        return rows

    @staticmethod
    def prompts(sample: Sample) -> list[Prompt]:
        return prompts_from_mask(sample.mask)


def _index_table(dataset: Dataset, task: str) -> pd.DataFrame:
    rows = []
    for s in dataset:
        rows.append({
            "id": s.id, "image": dataset.image_relpath(s.id),
            "mask": dataset.mask_relpath(s.id) if task != "classification" else None,
            "height": s.spatial_shape[0], "width": s.spatial_shape[1],
            "spacing": None if s.spacing is None else list(s.spacing)})
    return pd.DataFrame(rows)


def _prompt_table(dataset: Dataset) -> pd.DataFrame:
    rows = []
    for s in dataset:
        for k, p in enumerate(_Predictor.prompts(s)):
            x0, y0, x1, y1 = p.box if p.box else (np.nan,) * 4
            (px, py), = p.points
            rows.append({"id": s.id, "object": k, "box_x0": x0, "box_y0": y0, "box_x1": x1,
                         "box_y1": y1, "point_x": px, "point_y": py,
                         "point_label": p.point_labels[0]})
    return pd.DataFrame(rows)


def run_suite(adapter: ModelAdapter, dataset: Dataset, out_dir: str | Path,
              config: SuiteConfig, model_info: dict[str, Any] | None = None,
              command: Sequence[str] | None = None, progress: bool = True,
              render: bool = True) -> Path:
    """Run every condition of ``config`` and write the run directory; returns its path."""
    run_dir = Path(out_dir)
    model_info = dict(model_info or {"name": adapter.name})
    task = adapter.spec.task
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    _check_compatible(adapter, dataset)
    dataset.validate(progress=progress)
    data_hash = dataset.content_hash()
    stages["validate"] = time.perf_counter() - t0

    run_dir.mkdir(parents=True, exist_ok=True)
    parts = run_dir / PARTS
    key = _cache_key(model_info, data_hash, task, config)
    key_file = parts / "key.txt"
    if not key_file.exists() or key_file.read_text() != key:
        shutil.rmtree(parts, ignore_errors=True)
        shutil.rmtree(run_dir / "predictions", ignore_errors=True)
        parts.mkdir(parents=True)
        key_file.write_text(key)
    write_table(_index_table(dataset, task), run_dir / "predictions" / "index.parquet")
    if task == "promptable":
        write_table(_prompt_table(dataset), run_dir / "predictions" / "prompts.parquet")

    predictor = _Predictor(adapter, dataset, run_dir, config)
    conditions = config.conditions()
    per_condition_s: dict[str, float] = {}
    cached: list[str] = []
    bar = tqdm(conditions, desc=f"{task} suite", unit="condition", disable=not progress)
    for cond in bar:
        part = parts / f"{cond.name}.parquet"
        seconds = part.with_suffix(".seconds")
        if part.exists() and condition_path(run_dir, cond.name, task).exists():
            cached.append(cond.name)
            per_condition_s[cond.name] = float(seconds.read_text()) if seconds.exists() else 0.0
            continue
        t = time.perf_counter()
        write_table(predictor.run(cond, progress), part)
        per_condition_s[cond.name] = time.perf_counter() - t
        seconds.write_text(repr(per_condition_s[cond.name]))
    stages["predict"] = sum(v for k, v in per_condition_s.items() if k not in cached)

    t = time.perf_counter()
    names = [c.name for c in conditions]
    per_sample = pd.concat([pd.read_parquet(parts / f"{n}.parquet") for n in names],
                           ignore_index=True)
    per_sample = per_sample[["id", "condition", "test", "family", "severity", "target",
                             "metric", "value"]]
    write_table(per_sample, run_dir / "per_sample.parquet")
    cond_table = pd.DataFrame([{"condition": c.name, "test": c.test, "family": c.family,
                                "severity": c.severity} for c in conditions])
    if task == "classification":
        preds = pd.concat([pd.read_parquet(condition_path(run_dir, n, task)) for n in names],
                          ignore_index=True)
        metrics = aggregate_classification(preds, cond_table, adapter.spec.multi_label,
                                           config.threshold, config.n_bootstrap, config.seed,
                                           progress=progress)
    else:
        metrics = aggregate_per_image(per_sample, cond_table, config.n_bootstrap, config.seed)
    write_table(metrics, run_dir / "metrics.parquet")
    stages["aggregate"] = time.perf_counter() - t

    run_info = {
        "medfail_version": medfail.__version__,
        "task": task,
        "command": list(command) if command is not None else sys.argv,
        "seed": config.seed,
        "config": config.to_dict(),
        "conditions": names,
        "model": {**model_info, "spec": adapter.spec.to_dict()},
        "data": {"name": Path(dataset.root).name, "n_samples": len(dataset),
                 "content_hash": data_hash, "targets": list(adapter.spec.target_names)},
        "packages": package_versions(),
        "hardware": hardware(),
        "wall_clock_s": {"stages": stages, "per_condition": per_condition_s},
        "cached_conditions": cached,
    }
    _write_json(run_dir / "run.json", run_info)
    if render:
        from medfail.report.html import render_report

        t = time.perf_counter()
        render_report(run_dir)
        stages["report"] = time.perf_counter() - t
        _write_json(run_dir / "run.json", run_info)
    return run_dir


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
