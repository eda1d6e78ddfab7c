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
from medfail.analysis.aggregate import (
    Estimate,
    Key,
    aggregate_classification,
    aggregate_per_image,
)
from medfail.analysis.calibration import calibration_table, fit_temperatures
from medfail.analysis.mitigation import mitigation_table
from medfail.analysis.per_sample import classification_rows, segmentation_rows
from medfail.analysis.ranking import breaking_table
from medfail.analysis.segmentation_calibration import (
    add_pixel_bins,
    image_confidences,
    pixel_bin_table,
    sampling_agreement,
    segmentation_calibration_table,
)
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
from medfail.metrics.classification import threshold_max_f1
from medfail.models.adapters import ModelAdapter
from medfail.slices.definitions import slice_membership
from medfail.slices.features import mask_features
from medfail.stress.corruptions import perturb_samples
from medfail.stress.prompt_perturbations import perturb_prompts, prompt_table_rows
from medfail.uncertainty.postprocess import PostProcess, choose_params
from medfail.uncertainty.postprocess import apply as apply_postprocess
from medfail.uncertainty.sampling import (
    NotApplicable,
    ensemble_predict,
    mc_dropout_predict,
    tta_predict,
)

PARTS = ".parts"
#: bump when what a finished condition stores changes, so older caches are recomputed
PARTS_FORMAT = 2
SHIFT = Condition("shift_data", "shift_data", "domain_shift", 1)
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
                       "medfail": medfail.__version__, "format": PARTS_FORMAT},
                      sort_keys=True)
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
                 config: SuiteConfig, spacing_mm: bool) -> None:
        self.adapter, self.dataset, self.run_dir, self.config = adapter, dataset, run_dir, config
        self.task = adapter.spec.task
        self.targets = list(adapter.spec.target_names)
        self.spacing_mm = spacing_mm
        self.prompt_rows: list[dict[str, Any]] = []
        self.postprocess: PostProcess | None = None
        self.members: list[ModelAdapter] = [adapter]

    def images(self, batch: list[Sample], cond: Condition) -> list[np.ndarray]:
        src = cond.source
        if src.severity == 0 or src.family == "prompt" or src.test == SHIFT.test:
            return [s.image for s in batch]  # prompt tests and shift data keep the images
        return perturb_samples(batch, src.name, self.config.seed)

    def _predict(self, batch: list[Sample], images: list[np.ndarray], cond: Condition,
                 prompts: list[list[Prompt]] | None = None) -> tuple[list[np.ndarray], list]:
        """Predictions by the condition's method, and a per-sample spread (None if plain)."""
        ids = [s.id for s in batch]
        if cond.method == "tta":
            return tta_predict(self.adapter, images, prompts)
        if cond.method == "ensemble":
            return ensemble_predict(self.members, images, prompts)
        if cond.method == "mc_dropout":
            return mc_dropout_predict(self.adapter, images, ids, self.config.seed,
                                      self.config.mc_passes, prompts)
        if cond.method == "morphology":
            assert self.postprocess is not None and cond.base is not None
            stored = np.load(condition_path(self.run_dir, cond.base.name, self.task))
            out = []
            for sid in ids:
                fg = apply_postprocess(stored[sid][0].astype(np.float32), self.postprocess)
                out.append(np.stack([1.0 - fg, fg]))
            return out, [None] * len(ids)
        if prompts is not None:
            return list(self.adapter.predict_proba(images, prompts)), [None] * len(ids)
        return list(self.adapter.predict_proba(images)), [None] * len(ids)

    def run(self, cond: Condition, progress: bool) -> pd.DataFrame:
        self.prompt_rows = []
        self.confidence_rows: list[dict[str, Any]] = []
        self.pixel_bins: dict[tuple[str, str], np.ndarray] = {}
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
                    rows += self._segment(batch, images, writer, cond)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
            per_sample = pd.DataFrame(rows)
            if self.prompt_rows:
                write_table(pd.DataFrame(self.prompt_rows),
                            out_path.with_name(f"{cond.name}.prompts.parquet"))
            write_table(pd.DataFrame(self.confidence_rows),
                        out_path.with_name(f"{cond.name}.confidence.parquet"))
            write_table(pixel_bin_table(self.pixel_bins),
                        out_path.with_name(f"{cond.name}.pixel_bins.parquet"))
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
        probs_list, spreads = self._predict(batch, images, cond)
        probs = np.stack(probs_list)
        spread = np.stack([np.full(len(self.targets), np.nan) if sp is None else sp
                           for sp in spreads])
        labels = np.stack([self._one_hot(s) for s in batch])
        k = len(self.targets)
        return pd.DataFrame({
            "id": np.repeat([s.id for s in batch], k), "condition": cond.name,
            "test": cond.test, "family": cond.family, "severity": cond.severity,
            "target": np.tile(self.targets, len(batch)),
            "prob": probs.reshape(-1).astype(np.float64), "label": labels.reshape(-1),
            "spread": spread.reshape(-1).astype(np.float64)})

    def _one_hot(self, s: Sample) -> np.ndarray:
        label = np.asarray(s.label)
        if self.adapter.spec.multi_label:
            return label.astype(np.int64).reshape(-1)
        return np.eye(len(self.targets), dtype=np.int64)[int(label.reshape(-1)[0])]

    def _segment(self, batch: list[Sample], images: list[np.ndarray],
                 writer: MapWriter | None, cond: Condition) -> list[dict[str, object]]:
        prompts = None
        if self.task == "promptable":
            prompts = [self.prompts(s) for s in batch]
            src = cond.source
            if src.family == "prompt":
                prompts = perturb_prompts(prompts, [s.mask for s in batch],
                                          [s.id for s in batch], src.name, self.config.seed)
                self.prompt_rows += prompt_table_rows(prompts, [s.id for s in batch], cond.name)
        probs, spreads = self._predict(batch, images, cond, prompts)
        rows: list[dict[str, object]] = []
        for s, p, spread in zip(batch, probs, spreads, strict=True):
            fg = quantise(p)
            assert writer is not None
            writer.add(s.id, fg)
            for k, target in enumerate(self.targets):
                p = fg[k].astype(np.float32)
                signals = image_confidences(p)
                if spread is not None:
                    signals["sampling_agreement"] = sampling_agreement(p, spread[k + 1])
                self.confidence_rows += [{"id": s.id, "target": target, "signal": name,
                                          "value": value} for name, value in signals.items()]
                add_pixel_bins(self.pixel_bins, target, p, s.mask == k + 1)
            rows += segmentation_rows(
                s.id, fg, s.mask, self.targets, self.config.boundary_tolerance_px,
                spacing=s.spacing if self.spacing_mm else None,
                surface_tolerance=self.config.surface_tolerance_mm,
                min_overlap=self.config.lesion_min_overlap)
        return rows

    @staticmethod
    def prompts(sample: Sample) -> list[Prompt]:
        return prompts_from_mask(sample.mask)


def _index_table(dataset: Dataset, task: str) -> pd.DataFrame:
    """One row per sample: relative paths, size, spacing, modality and GT mask features."""
    rows = []
    for s in dataset:
        row: dict[str, Any] = {
            "id": s.id, "image": dataset.image_relpath(s.id),
            "mask": dataset.mask_relpath(s.id) if task != "classification" else None,
            "height": s.spatial_shape[0], "width": s.spatial_shape[1],
            "spacing": None if s.spacing is None else list(s.spacing), "modality": s.modality}
        if s.mask is not None:
            row.update(mask_features(s.mask, s.spacing))
        rows.append(row)
    return pd.DataFrame(rows)


def _prompt_table(dataset: Dataset) -> pd.DataFrame:
    rows = []
    for s in dataset:
        rows += prompt_table_rows([_Predictor.prompts(s)], [s.id])
    return pd.DataFrame(rows)


def data_modality(index: pd.DataFrame, metadata: pd.DataFrame | None,
                  config: SuiteConfig) -> str:
    """The suite config's ``modality``, else a metadata ``modality`` column, else the files'."""
    if config.modality:
        return config.modality
    for source in (metadata, index):
        if source is not None and "modality" in source:
            values = {str(v) for v in source["modality"].dropna() if str(v)}
            if len(values) == 1:
                return values.pop()
    return ""


def calibration_predictions(adapter: ModelAdapter, calibration: Dataset, config: SuiteConfig,
                            progress: bool) -> pd.DataFrame:
    """Clean predictions on the calibration split (long table, as ``predictions/clean``)."""
    calibration.validate(progress=progress)
    predictor = _Predictor(adapter, calibration, Path("."), config, spacing_mm=False)
    cond = Condition("calibration", "calibration", "calibration", 0)
    return pd.concat([predictor._classify(b, [s.image for s in b], cond)
                      for b in calibration.batches(config.batch_size)], ignore_index=True)


def calibration_thresholds(predictions: pd.DataFrame) -> dict[str, float]:
    """Per-target F1-maximising thresholds on the calibration split (never on test)."""
    out = {}
    for target, grp in predictions.groupby("target", sort=False):
        out[str(target)] = float(threshold_max_f1(grp["label"].to_numpy(),
                                                  grp["prob"].to_numpy()))
    return out


def run_suite(adapter: ModelAdapter, dataset: Dataset, out_dir: str | Path,
              config: SuiteConfig, model_info: dict[str, Any] | None = None,
              command: Sequence[str] | None = None, progress: bool = True,
              render: bool = True, calibration: Dataset | None = None,
              shift: Dataset | None = None, ensemble: Sequence[ModelAdapter] = ()) -> Path:
    """Run every condition of ``config`` and write the run directory; returns its path.

    ``calibration``: a split used only to choose classification thresholds (F1-maximising per
    target). ``shift``: a second site's data, evaluated clean as condition ``shift_data`` and
    compared with the in-domain clean result (unpaired Δ). ``ensemble``: further models of the
    same task and targets; with them a deep-ensemble condition ``ensemble`` is stored.
    """
    run_dir = Path(out_dir)
    model_info = dict(model_info or {"name": adapter.name})
    task = adapter.spec.task
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    for ds in (dataset, calibration, shift):
        if ds is not None:
            _check_compatible(adapter, ds)
            ds.validate(progress=progress)
    data_hash = dataset.content_hash()
    index = _index_table(dataset, task)
    metadata = getattr(dataset, "metadata", None)
    modality = data_modality(index, metadata, config)
    conditions = config.conditions(task, modality)
    spacing_mm = task != "classification" and bool(index["spacing"].notna().all())
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
    write_table(index, run_dir / "predictions" / "index.parquet")
    if task == "promptable":
        write_table(_prompt_table(dataset), run_dir / "predictions" / "prompts.parquet")

    thresholds: dict[str, float] | float = config.threshold
    cal_preds = None
    if calibration is not None and task == "classification":
        t = time.perf_counter()
        cal_preds = calibration_predictions(adapter, calibration, config, progress)
        write_table(cal_preds, run_dir / "predictions" / "calibration.parquet")
        if adapter.spec.multi_label:
            thresholds = calibration_thresholds(cal_preds)
        stages["calibration"] = time.perf_counter() - t

    per_condition_s: dict[str, float] = {}
    cached: list[str] = []
    not_applicable: dict[str, str] = {}
    done: list[Condition] = []

    def run_jobs(jobs: list[tuple[Condition, Dataset]], postprocess: PostProcess | None = None
                 ) -> None:
        bar = tqdm(jobs, desc=f"{task} suite", unit="condition", disable=not progress)
        for cond, ds in bar:
            part = parts / f"{cond.name}.parquet"
            seconds = part.with_suffix(".seconds")
            stored = condition_path(run_dir, cond.name, task)
            complete = stored.exists() and (task == "classification" or stored.with_name(
                f"{cond.name}.pixel_bins.parquet").exists())
            if part.exists() and complete and cond is not SHIFT:
                cached.append(cond.name)
                per_condition_s[cond.name] = float(seconds.read_text()) \
                    if seconds.exists() else 0.0
                done.append(cond)
                continue
            t = time.perf_counter()
            predictor = _Predictor(adapter, ds, run_dir, config, spacing_mm)
            predictor.postprocess = postprocess
            predictor.members = [adapter, *ensemble]
            try:
                write_table(predictor.run(cond, progress), part)
            except NotApplicable as exc:
                not_applicable[cond.name] = str(exc)
                continue
            per_condition_s[cond.name] = time.perf_counter() - t
            seconds.write_text(repr(per_condition_s[cond.name]))
            done.append(cond)

    for member in ensemble:
        if member.spec.task != task or member.spec.target_names != adapter.spec.target_names:
            raise MedfailInputError(member.name, "ensemble members need the task and targets "
                                    f"of the main model ({task}, {adapter.spec.target_names})")
    methods = config.method_conditions() + ([Condition(
        "ensemble", "ensemble", "uncertainty", 0, method="ensemble", base=conditions[0])]
        if ensemble else [])
    run_jobs([(c, dataset) for c in conditions + methods]
             + ([(SHIFT, shift)] if shift is not None else []))
    membership = slice_membership(index, metadata, config.slices, config.size_threshold_px,
                                  "mm2" if spacing_mm else "px")
    write_table(membership, run_dir / "slices.parquet")
    mitigation_info: dict[str, Any] = {}
    if config.mitigate:
        t = time.perf_counter()
        per_sample = _per_sample(parts, conditions)
        metrics = _aggregate(run_dir, task, adapter, conditions, per_sample, membership,
                             thresholds, config, False, False)
        worst = _worst_condition(breaking_table(metrics, task), conditions)
        stages["mitigation_choice"] = time.perf_counter() - t
        if worst is not None:
            jobs = [(Condition(f"tta|{worst.name}", "tta", "mitigation", worst.severity,
                               method="tta", base=worst), dataset)]
            postprocess = None
            if task != "classification" and calibration is not None:
                postprocess, cal_dice = _choose_postprocess(adapter, calibration, config)
                mitigation_info["postprocess"] = {**postprocess.to_dict(),
                                                  "calibration_dice": cal_dice}
                jobs.append((Condition(f"morphology|{worst.name}", "morphology", "mitigation",
                                       worst.severity, method="morphology", base=worst),
                             dataset))
            mitigation_info["worst_condition"] = worst.name
            run_jobs(jobs, postprocess)
    stages["predict"] = sum(v for k, v in per_condition_s.items() if k not in cached)

    t = time.perf_counter()
    all_conditions = [c for c in done if c is not SHIFT]
    names = [c.name for c in all_conditions] + ([SHIFT.name] if shift is not None else [])
    per_sample = _per_sample(parts, all_conditions + ([SHIFT] if shift is not None else []))
    write_table(per_sample, run_dir / "per_sample.parquet")
    draws: dict[Key, Estimate] = {}
    metrics = _aggregate(run_dir, task, adapter, all_conditions, per_sample, membership,
                         thresholds, config, shift is not None, progress, draws)
    write_table(metrics, run_dir / "metrics.parquet")
    ranking = breaking_table(metrics, task)
    write_table(ranking, run_dir / "ranking.parquet")
    temperatures = None
    if task == "classification":
        if cal_preds is not None:
            temperatures = fit_temperatures(cal_preds, adapter.spec.multi_label)
        preds = pd.concat([pd.read_parquet(condition_path(run_dir, n, task)) for n in names],
                          ignore_index=True)
        cal_table = calibration_table(preds, adapter.spec.multi_label, thresholds, temperatures)
    else:
        cal_table = segmentation_calibration_table(run_dir, all_conditions, per_sample)
    write_table(cal_table, run_dir / "calibration.parquet")
    write_table(mitigation_table(task, all_conditions, draws, cal_table, ranking,
                                 per_condition_s, config),
                run_dir / "mitigations.parquet")
    stages["aggregate"] = time.perf_counter() - t

    run_info = {
        "medfail_version": medfail.__version__,
        "task": task,
        "command": list(command) if command is not None else sys.argv,
        "seed": config.seed,
        "config": config.to_dict(),
        "conditions": names,
        "modality": modality,
        "distance_unit": "mm" if spacing_mm else "px",
        "thresholds": thresholds,
        "temperatures": temperatures,
        "model": {**model_info, "spec": adapter.spec.to_dict(),
                  "ensemble": [m.name for m in ensemble]},
        "data": {"name": Path(dataset.root).name, "n_samples": len(dataset),
                 "content_hash": data_hash, "targets": list(adapter.spec.target_names),
                 "calibration": None if calibration is None else {
                     "name": Path(calibration.root).name, "n_samples": len(calibration)},
                 "shift": None if shift is None else {
                     "name": Path(shift.root).name, "n_samples": len(shift),
                     "content_hash": shift.content_hash()}},
        "packages": package_versions(),
        "hardware": hardware(),
        "wall_clock_s": {"stages": stages, "per_condition": per_condition_s},
        "cached_conditions": cached,
        "not_applicable": not_applicable,
        "mitigation": mitigation_info,
    }
    _write_json(run_dir / "run.json", run_info)
    if render:
        from medfail.report.html import render_report

        t = time.perf_counter()
        render_report(run_dir)
        stages["report"] = time.perf_counter() - t
        _write_json(run_dir / "run.json", run_info)
    return run_dir


def _per_sample(parts: Path, conditions: Sequence[Condition]) -> pd.DataFrame:
    per_sample = pd.concat([pd.read_parquet(parts / f"{c.name}.parquet") for c in conditions],
                           ignore_index=True)
    return per_sample[["id", "condition", "test", "family", "severity", "target", "metric",
                       "value"]]


def _worst_condition(ranking: pd.DataFrame, conditions: Sequence[Condition]
                     ) -> Condition | None:
    """The top significant stress condition (mitigations are measured on it)."""
    by_name = {c.name: c for c in conditions}
    for r in ranking.itertuples():
        if r.kind == "condition" and r.significant and r.name in by_name:
            return by_name[r.name]
    return None


def _choose_postprocess(adapter: ModelAdapter, calibration: Dataset, config: SuiteConfig
                        ) -> tuple[PostProcess, float]:
    """Post-processing parameters chosen on the calibration split's clean predictions."""
    probs, masks = [], []
    for batch in calibration.batches(config.batch_size):
        if adapter.spec.task == "promptable":
            out = adapter.predict_proba([s.image for s in batch],  # type: ignore[call-arg]
                                        [_Predictor.prompts(s) for s in batch])
        else:
            out = adapter.predict_proba([s.image for s in batch])
        for s, p in zip(batch, out, strict=True):
            probs.append(quantise(p)[0].astype(np.float32))
            masks.append(s.mask)
    return choose_params(probs, masks)


def _aggregate(run_dir: Path, task: str, adapter: ModelAdapter, conditions: list[Condition],
               per_sample: pd.DataFrame, membership: pd.DataFrame,
               thresholds: dict[str, float] | float, config: SuiteConfig, with_shift: bool,
               progress: bool, draws: dict[Key, Estimate] | None = None) -> pd.DataFrame:
    """metrics.parquet rows: every condition and slice, plus ``shift_data`` vs in-domain."""
    cond_table = _conditions_table(conditions)
    draws = {} if draws is None else draws
    common = {"n_bootstrap": config.n_bootstrap, "seed": config.seed,
              "min_slice_n": config.min_slice_n}
    main_ps = per_sample[per_sample["condition"] != SHIFT.name]
    if task == "classification":
        preds = pd.concat([pd.read_parquet(condition_path(run_dir, c.name, task))
                           for c in conditions], ignore_index=True)
        metrics = aggregate_classification(
            preds, cond_table, adapter.spec.multi_label, thresholds, membership=membership,
            progress=progress, draws_out=draws, **common)
    else:
        metrics = aggregate_per_image(main_ps, cond_table, membership=membership,
                                      draws_out=draws, **common)
    if not with_shift:
        return metrics
    shift_table = _conditions_table([SHIFT])
    if task == "classification":
        shift_preds = pd.read_parquet(condition_path(run_dir, SHIFT.name, task))
        shift_metrics = aggregate_classification(
            shift_preds, shift_table, adapter.spec.multi_label, thresholds, reference=draws,
            **common)
    else:
        shift_metrics = aggregate_per_image(per_sample[per_sample["condition"] == SHIFT.name],
                                            shift_table, reference=draws, **common)
    return pd.concat([metrics, shift_metrics], ignore_index=True)


def _conditions_table(conditions: Sequence[Condition]) -> pd.DataFrame:
    return pd.DataFrame([{"condition": c.name, "test": c.test, "family": c.family,
                          "severity": c.severity} for c in conditions])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
