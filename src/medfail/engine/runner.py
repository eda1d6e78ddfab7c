"""The runner: validate -> (perturb -> predict -> store) per condition -> aggregate -> report.

Inference happens once per condition, on an executor (``local`` or ``ray``,
:mod:`medfail.engine.executors`); everything after reads the run directory. Each finished
condition is kept on disk (``predictions/<condition>.*``, then ``.parts/<condition>.parquet`` as
its commit marker, all written atomically), so a crash never loses finished results and a re-run
with the same model, data and options recomputes only the conditions that are missing.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import medfail
from medfail import rundir
from medfail.analysis.aggregate import undefined_targets
from medfail.analysis.analyse import (
    PER_SAMPLE_COLUMNS,
    analyse,
    calibration_thresholds,  # noqa: F401  (re-exported: chosen on the calibration split)
    decision_thresholds,
    metrics_table,
    worst_condition,
)
from medfail.analysis.ranking import breaking_table
from medfail.analysis.segmentation_calibration import BAND_PX
from medfail.data.datasets import Dataset
from medfail.engine.allocator import return_freed_volumes
from medfail.engine.embeddings import store_embeddings
from medfail.engine.evidence import write_evidence
from medfail.engine.executors import Executor, Job, ModelLoader, make_executor
from medfail.engine.predictions import (
    GroundTruth,
    MapWriter,
    NpzSequence,
    NpzWriter,
    file_sha256,
    metric_units,
    quantise,
)
from medfail.engine.predictor import SHIFT, Predictor, with_spacings
from medfail.engine.stage_cache import files_digest, results_view, stage_key, stored_inputs
from medfail.engine.suite import Condition, SuiteConfig
from medfail.errors import MedfailInputError, listing
from medfail.models.adapters import ModelAdapter
from medfail.models.intensity import check_intensity
from medfail.models.onnx_export import use_runtime
from medfail.models.output_checks import probe_models
from medfail.models.spec import ModelSpec
from medfail.privacy import sanitize_command
from medfail.rundir import (
    TEST_SPLIT,
    Manifest,
    check_configuration,
    check_out_dir,
    condition_files,
    damage,
    open_run_dir,
    snapshot,
    split_paths,
    write_atomic,
    write_table,
)
from medfail.slices.definitions import metadata_slices, slice_membership
from medfail.slices.features import mask_features
from medfail.stress.prompt_perturbations import prompt_table_rows
from medfail.uncertainty.postprocess import PostProcess, choose_params

PARTS = rundir.PARTS
#: the run directory's top-level tables (listed in the manifest before they are written)
TABLES = rundir.TABLES
#: bump when what a finished condition stores changes, so older caches are recomputed
#: (4: masks interpreted by mask mode, 16-bit images on the 8-bit scale, effective bit depth;
#: 5: the pixel_bins band is Euclidean distance <= 5 px, was city-block;
#: 6: classification predictions store the model's logits, mask_entropy without a 1e-7 clip;
#: 7: pixel_bins gain sum_prob_sq and sum_prob_label for the pixel Brier score)
PARTS_FORMAT = 7
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


def hardware(device: str = "cpu") -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor(),
            "system": platform.system(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cache_identity(model_info: dict[str, Any], data_hash: str, task: str,
                    config: SuiteConfig, device: str = "cpu", spec: ModelSpec | None = None,
                    ensemble: Sequence[ModelAdapter] = (), calibration_hash: str | None = None
                    ) -> tuple[dict[str, Any], bool]:
    """What finished conditions depend on (kept in the run directory's manifest), and whether
    they may be reused: without a model hash they are not (a model known only by name may have
    changed since), nor with ensemble members whose files are not hashed
    (``model_info["ensemble_sha256"]``, one per member, as ``medfail run`` passes it). The
    model spec is part of it (a sidecar ``--model-spec`` can change with the model file
    unchanged), as are the ensemble members (the ``ensemble`` condition) and, when given, the
    calibration split's hash (segmentation post-processing is chosen on it). The device type is
    part of it (GPU kernels round differently); the executor is not (results do not depend on
    it), nor are the tests and severities (conditions)."""
    cfg = config.to_dict()
    cfg.pop("tests")
    cfg.pop("severities")
    cfg.pop("checks", None)  # pass/fail limits are read by the report, not by inference
    identity = {"model": model_info.get("sha256") or f"name:{model_info.get('name')}",
                "spec": None if spec is None else spec.to_dict(),
                "data": data_hash, "task": task, "config": cfg,
                "device": torch.device(device).type,
                "medfail": medfail.__version__, "format": PARTS_FORMAT}
    if model_info.get("runtime", "torch") != "torch":  # ORT rounds differently
        identity["runtime"] = model_info["runtime"]
    reusable = bool(model_info.get("sha256"))
    if ensemble:
        hashes = list(model_info.get("ensemble_sha256") or [])
        hashes += [None] * (len(ensemble) - len(hashes))
        identity["ensemble"] = [{"model": h or f"name:{m.name}", "spec": m.spec.to_dict()}
                                for m, h in zip(ensemble, hashes, strict=False)]
        reusable = reusable and all(hashes[:len(ensemble)])
    if calibration_hash is not None:
        identity["calibration"] = calibration_hash
    return identity, reusable


def _check_compatible(adapter: ModelAdapter, dataset: Dataset) -> None:
    spec = adapter.spec
    if spec.task == "classification" and list(dataset.target_names) != list(spec.target_names):
        raise MedfailInputError(
            getattr(dataset, "root", None),
            f"labels have targets {list(dataset.target_names)} but the model predicts "
            f"{list(spec.target_names)}")
    check_labels = getattr(dataset, "check_mask_labels", None)
    if spec.task != "classification" and check_labels is not None:
        check_labels(spec.target_names)  # mask labels the model does not know: refused here


def _index_table(dataset: Dataset, task: str, gt: GroundTruth | None = None) -> pd.DataFrame:
    """One row per sample: relative paths, mask file sha256, size, spacing, modality and GT mask
    features; the interpreted masks (and instance maps) go to ``gt`` (written once listed)."""
    rows = []
    for s in dataset:
        mask = dataset.mask_relpath(s.id) if task != "classification" else None
        shape = s.spatial_shape
        row: dict[str, Any] = {
            "id": s.id, "image": dataset.image_relpath(s.id), "mask": mask,
            "mask_sha256": None if mask is None else file_sha256(Path(dataset.root) / mask),
            "height": shape[0], "width": shape[1],
            "depth": shape[2] if len(shape) > 2 else None,
            "spacing": None if s.spacing is None else list(s.spacing), "modality": s.modality}
        if s.mask is not None:
            row.update(mask_features(s.object_map, s.spacing))  # instances: one object each
            if gt is not None:
                gt.add(s.id, s.mask, s.instances)
        rows.append(row)
    return pd.DataFrame(rows)


def spatial_dims(index: pd.DataFrame, dataset: Dataset) -> int:
    """2 (images) or 3 (volumes) from the index's ``depth``; a dataset mixing them is refused."""
    if "depth" not in index:
        return 2
    volumes = index["depth"].notna()
    if volumes.any() and not volumes.all():
        flat, deep = index.loc[~volumes, "image"].tolist(), index.loc[volumes, "image"].tolist()
        raise MedfailInputError(
            getattr(dataset, "root", None),
            f"mixes 2D images ({listing(flat, 3)}) and 3D volumes ({listing(deep, 3)}); a run "
            "takes one kind: put them in separate folders")
    return 3 if volumes.any() else 2


def check_volume_task(adapter: ModelAdapter, dims: int, dataset: Dataset) -> None:
    """Volumes take segmenters only, whose spec says 3 spatial dims when it says any; refused
    before any model runs."""
    spec = adapter.spec
    if dims == 3 and spec.task != "segmentation":
        raise MedfailInputError(
            getattr(dataset, "root", None),
            f"holds 3D volumes, which medfail evaluates with segmenters only; task "
            f"'{spec.task}' takes 2D images (use --task segmentation with a 3D segmenter, or "
            "2D slices exported as images)")
    want = getattr(spec, "spatial_dims", None)
    if want is not None and int(want) != dims:
        kind = "3D volumes" if dims == 3 else "2D images"
        raise MedfailInputError(
            adapter.name, f"the model spec says spatial_dims {want} but the data are {kind} "
            f"({getattr(dataset, 'root', '')}); set spatial_dims: {dims} (and an input_size of "
            f"{dims} numbers) in the model spec if the model takes them")


def _write_split(manifest: Manifest, split: str, index: pd.DataFrame,
                 gt: GroundTruth) -> None:
    """A split's ``predictions/`` index and ground truth, each listed before it is written."""
    paths = split_paths(manifest.run_dir, split)
    manifest.claim(paths["index"], *gt.paths(manifest.run_dir, split))
    write_table(index, paths["index"])
    gt.write(manifest.run_dir, split)


def _check_shift_spacing(shift: Dataset, shift_index: pd.DataFrame) -> None:
    """The test data has a pixel spacing for every image (nsd and hd95 in mm): the shift data
    must too, else its values would be in px and its Δ vs in-domain meaningless."""
    missing = shift_index.loc[shift_index["spacing"].isna(), "image"].tolist()
    if missing:
        raise MedfailInputError(
            shift.root, f"no pixel spacing for {len(missing)} of {len(shift_index)} images "
            f"({listing(missing, 3)}) while every test image has one: nsd and hd95 are in mm "
            "for the test data and would be in px for these; add a pixel_spacing column to its "
            "metadata.csv (or use data whose headers carry the spacing)")


def _prompt_table(dataset: Dataset) -> pd.DataFrame:
    rows = []
    for s in dataset:
        rows += prompt_table_rows([Predictor.prompts(s)], [s.id])
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


def run_suite(adapter: ModelAdapter, dataset: Dataset, out_dir: str | Path,
              config: SuiteConfig, model_info: dict[str, Any] | None = None,
              command: Sequence[str] | None = None, progress: bool = True,
              render: bool = True, calibration: Dataset | None = None,
              shift: Dataset | None = None, ensemble: Sequence[ModelAdapter] = (),
              executor: str = "local", ray_address: str | None = None,
              ray_workers: int | None = None, model_loader: ModelLoader | None = None,
              overwrite: bool = True) -> Path:
    """Run every condition of ``config`` and write the run directory; returns its path.

    Two stages: :func:`predict` (model and data: validation, index, ground truth, every
    condition's predictions, calibration predictions, mitigation forward passes, ``run.json``),
    then :func:`medfail.analysis.analyse.analyse` (the run directory alone: slices, metrics,
    ranking, calibration and mitigation tables; ``medfail analyse`` calls the same function),
    then the case studies (they read the ranking and need the images) and the report.

    ``calibration``: a split used only to choose classification thresholds (F1-maximising per
    target). ``shift``: a second site's data, evaluated clean as condition ``shift_data`` and
    compared with the in-domain clean result (unpaired Δ). ``ensemble``: further models of the
    same task and targets; with them a deep-ensemble condition ``ensemble`` is stored.
    ``executor``: ``local`` or ``ray`` (``ray_address``: an existing cluster, default a local
    Ray; ``ray_workers``: actors, default one per GPU, else one per two CPUs; ``model_loader``:
    how workers rebuild ``[adapter, *ensemble]``, default the adapters pickled). Models run on
    the adapter's device. ``overwrite=False`` (the CLI's default) refuses a non-empty folder that
    is not a run directory of this configuration; with ``True`` medfail's own files of another
    configuration are replaced. Either way only files medfail wrote (its manifest,
    :mod:`medfail.rundir`) are ever deleted.
    """
    stored = predict(adapter, dataset, out_dir, config, model_info, command, progress,
                     calibration, shift, ensemble, executor, ray_address, ray_workers,
                     model_loader, overwrite)
    run_dir, run_info, manifest = stored.run_dir, stored.run_info, stored.manifest
    cached_stages = run_info["cached_stages"]
    # what the analysis reads: the stored files and run.json; evidence and report follow it
    key = stage_key("analyse", results_view(run_info), stored_inputs(manifest))
    t = time.perf_counter()
    reused = manifest.cached_stage("analyse", key)
    if reused is None:
        manifest.drop_stage("analyse")
        updates = analyse(run_dir, config, progress=progress)
        run_info.update(updates)
        manifest.record_stage("analyse", key, [rundir.table(run_dir, name) for name in
                                               rundir.ANALYSIS_TABLES],
                              {k: v for k, v in updates.items() if k != "wall_clock_s"})
    else:
        run_info.update(reused)
        repeat_warnings(run_dir, reused)
        cached_stages.append("analyse")
        run_info["wall_clock_s"]["stages"]["aggregate"] = time.perf_counter() - t
    stages = run_info["wall_clock_s"]["stages"]
    _write_json(rundir.table(run_dir, rundir.RUN_JSON), run_info)
    t = time.perf_counter()
    if not _reuse_stage(manifest, "evidence", key, cached_stages):
        manifest.claim(rundir.table(run_dir, rundir.CASES_JSON))
        before = snapshot(run_dir, rundir.CASES)
        write_evidence(run_dir, dataset, adapter, config, stored.conditions, calibration)
        manifest.record_changed(before, rundir.CASES)  # case_<k>.npz: named while chosen
        manifest.record_stage("evidence", key, [rundir.table(run_dir, rundir.EVIDENCE),
                                                rundir.cases_dir(run_dir)])
    stages["evidence"] = time.perf_counter() - t
    _write_json(rundir.table(run_dir, rundir.RUN_JSON), run_info)
    if render:
        from medfail.report.html import render_report

        t = time.perf_counter()
        if not _reuse_stage(manifest, "report", key, cached_stages):
            render_report(run_dir)
            manifest.record_stage("report", key, [rundir.figures_dir(run_dir)] + [
                rundir.table(run_dir, n) for n in (rundir.REPORT_HTML, rundir.REPORT_PDF,
                                                 rundir.EXPLORER_HTML)])
        stages["report"] = time.perf_counter() - t
        _write_json(rundir.table(run_dir, rundir.RUN_JSON), run_info)
    return run_dir


def _reuse_stage(manifest: Manifest, name: str, key: str, cached_stages: list[str]) -> bool:
    """True (and ``name`` appended to ``cached_stages``) when the manifest's record of stage
    ``name`` has ``key`` and its outputs are intact; else the record is dropped (recompute)."""
    if manifest.cached_stage(name, key) is not None:
        cached_stages.append(name)
        return True
    manifest.drop_stage(name)
    return False


def repeat_warnings(run_dir: Path, analysis: dict[str, Any]) -> None:
    """The ``warning:`` lines a reused analysis printed when it ran (stderr)."""
    for message in (analysis.get("temperature_warnings") or {}).values():
        print(f"warning: {message}", file=sys.stderr, flush=True)
    undefined_targets(run_dir)  # one line per split with a one-class target


@dataclass
class Predicted:
    """What :func:`predict` stored: the run directory, its manifest, ``run.json`` as written
    (before the analysis entries) and the stored conditions (``shift_data`` last)."""

    run_dir: Path
    manifest: Manifest
    run_info: dict[str, Any]
    conditions: list[Condition]


def predict(adapter: ModelAdapter, dataset: Dataset, out_dir: str | Path,
            config: SuiteConfig, model_info: dict[str, Any] | None = None,
            command: Sequence[str] | None = None, progress: bool = True,
            calibration: Dataset | None = None, shift: Dataset | None = None,
            ensemble: Sequence[ModelAdapter] = (), executor: str = "local",
            ray_address: str | None = None, ray_workers: int | None = None,
            model_loader: ModelLoader | None = None, overwrite: bool = True) -> Predicted:
    """The predict stage of :func:`run_suite` (same arguments): everything that needs the model
    or the images. Stores what :func:`~medfail.analysis.analyse.analyse` reads: the index and
    ground truth, every condition's predictions and per-sample rows (``per_sample.parquet``),
    ``slices.parquet`` (its ``meta.`` rows keep the data's metadata slices), the calibration
    split's predictions, and ``run.json`` (config, conditions, model spec, wall-clock per
    condition, ``mitigation``: the worst condition and the post-processing chosen)."""
    run_dir = Path(out_dir)
    check_out_dir(run_dir, overwrite)  # a file, not writable, a foreign folder: before all else
    model_info = dict(model_info or {"name": adapter.name})
    task = adapter.spec.task
    config.check_task(task)  # check metrics this task computes
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    for member in ensemble:
        if member.spec.task != task or member.spec.target_names != adapter.spec.target_names:
            raise MedfailInputError(member.name, "ensemble members need the task and targets "
                                    f"of the main model ({task}, {adapter.spec.target_names})")
    for ds in (dataset, calibration, shift):
        if ds is not None:
            _check_compatible(adapter, ds)
            ds.validate(progress=progress)
    data_hash = dataset.content_hash()
    shift_hash = None if shift is None else shift.content_hash()
    cal_hash = calibration.content_hash() if calibration is not None and config.mitigate \
        and task != "classification" else None  # post-processing is chosen on it
    identity, reusable = _cache_identity(model_info, data_hash, task, config, adapter.device,
                                         adapter.spec, ensemble, cal_hash)
    check_configuration(run_dir, identity, overwrite)  # before any model runs
    gt, shift_gt = GroundTruth(), GroundTruth()
    index = _index_table(dataset, task, gt)
    shift_index = None if shift is None else _index_table(shift, task, shift_gt)
    dims = spatial_dims(index, dataset)
    if shift_index is not None and spatial_dims(shift_index, shift) != dims:
        raise MedfailInputError(shift.root, "the shift data and the test data must both be 2D "
                                "images or both 3D volumes")
    check_volume_task(adapter, dims, dataset)
    if dims == 3:
        return_freed_volumes()  # freed volumes leave the process (engine/allocator.py)
    metadata = getattr(dataset, "metadata", None)
    modality = data_modality(index, metadata, config)
    conditions = config.conditions(task, modality, dims)
    spacing_mm = task != "classification" and bool(index["spacing"].notna().all())
    if spacing_mm and shift_index is not None:
        _check_shift_spacing(shift, shift_index)  # nsd/hd95 in mm for both, or refused
    probe_models([adapter, *ensemble], dataset, Predictor.prompts)  # outputs checked first
    intensity = check_intensity(adapter.spec, dataset)  # warns: test units vs training units
    stages["validate"] = time.perf_counter() - t0

    manifest = open_run_dir(run_dir, identity, reusable, overwrite)  # written first
    model_info["runtime"] = use_runtime(  # --runtime onnxruntime: export, check, switch
        adapter, str(model_info.get("runtime") or "torch"), dataset, Predictor.prompts,
        rundir.onnx_cache_dir(run_dir), manifest.claim, model_info.get("sha256"))
    rundir.parts_dir(run_dir).mkdir(exist_ok=True)
    manifest.claim(rundir.table(run_dir, rundir.SLICES))
    _write_split(manifest, TEST_SPLIT, index, gt)
    if shift_index is not None:
        _write_split(manifest, SHIFT.name, shift_index, shift_gt)
    if task == "promptable":
        manifest.claim(rundir.prompts_path(run_dir))
        write_table(_prompt_table(dataset), rundir.prompts_path(run_dir))

    cal_preds = None
    cached_stages: list[str] = []
    if calibration is not None and task == "classification":
        t = time.perf_counter()
        cal_path = rundir.condition_path(run_dir, rundir.CALIBRATION_SPLIT, task)
        key = stage_key(rundir.CALIBRATION_SPLIT, calibration.content_hash())
        if _reuse_stage(manifest, rundir.CALIBRATION_SPLIT, key, cached_stages):
            cal_preds = rundir.read_table(cal_path)
        else:
            cal_preds = calibration_predictions(adapter, calibration, config, progress)
            manifest.claim(cal_path)
            write_table(cal_preds, cal_path)
            manifest.record_stage(rundir.CALIBRATION_SPLIT, key, [cal_path])
        stages["calibration"] = time.perf_counter() - t
    thresholds = decision_thresholds(cal_preds, adapter.spec.multi_label, config.threshold,
                                     adapter.spec.target_names)

    methods = config.method_conditions() + ([Condition(
        "ensemble", "ensemble", "uncertainty", 0, method="ensemble", base=conditions[0])]
        if ensemble else [])
    record = _Record()
    engine = make_executor(executor, Predictor([adapter, *ensemble], config, spacing_mm, run_dir,
                                               dims), progress, ray_address, ray_workers,
                           model_loader)
    try:
        _run_conditions([Job(c, dataset) for c in conditions + methods]
                        + ([Job(SHIFT, shift)] if shift is not None else []),
                        engine, manifest, task, record, progress,
                        stage_key(SHIFT.name, shift_hash))
        membership = slice_membership(index, metadata, config.slices, config.size_threshold_px,
                                      "mm2" if spacing_mm else "px")
        write_table(membership, rundir.table(run_dir, rundir.SLICES))
        manifest.claim(rundir.metadata_slices_path(run_dir))
        write_table(_metadata_slices(metadata), rundir.metadata_slices_path(run_dir))
        mitigation_info: dict[str, Any] = {}
        if config.mitigate:
            t = time.perf_counter()
            key = stage_key("mitigation_choice", [c.name for c in conditions], files_digest(
                run_dir, [p for c in conditions for p in [rundir.part_path(run_dir, c.name),
                          *condition_files(run_dir, c.name, task)] if p.is_file()]),
                thresholds, cal_hash, dims)
            mitigation_info = manifest.cached_stage("mitigation_choice", key)
            if mitigation_info is None:
                manifest.drop_stage("mitigation_choice")
                mitigation_info = _choose_mitigations(run_dir, adapter, calibration, conditions,
                                                      membership, thresholds, config, dims)
                manifest.record_stage("mitigation_choice", key, [], mitigation_info)
            else:
                cached_stages.append("mitigation_choice")
            jobs = _mitigation_jobs(mitigation_info, conditions, dataset)
            stages["mitigation_choice"] = time.perf_counter() - t
            _run_conditions(jobs, engine, manifest, task, record, progress)
    finally:
        engine.close()
    t = time.perf_counter()
    embeddings = _embeddings(adapter, dataset, run_dir, manifest, config, data_hash,
                             cached_stages, progress)
    stages["embeddings"] = time.perf_counter() - t
    per_condition_s, cached, done = record.seconds, record.cached, record.done
    stages["predict"] = sum(v for k, v in per_condition_s.items() if k not in cached)

    manifest.claim(*(rundir.table(run_dir, name) for name in (*rundir.TABLES, rundir.SLICES)))
    all_conditions = [c for c in done if c is not SHIFT] + ([SHIFT] if shift is not None else [])
    write_table(_per_sample(run_dir, all_conditions), rundir.table(run_dir, rundir.PER_SAMPLE))
    run_info = {
        "medfail_version": medfail.__version__,
        "task": task,
        "command": sanitize_command(command or sys.argv),
        "seed": config.seed,
        "config": config.to_dict(),
        "conditions": [c.name for c in all_conditions],
        "modality": modality,
        "metric_units": metric_units(task, spacing_mm, config.boundary_tolerance_px,
                                     config.surface_tolerance_mm, BAND_PX, dims),
        "thresholds": thresholds,
        "temperatures": None,
        "temperature_warnings": {},
        "model": {**model_info, "spec": adapter.spec.to_dict(),
                  "ensemble": [m.name for m in ensemble]},
        "data": {"name": Path(dataset.root).name, "n_samples": len(dataset),
                 "spatial_dims": dims,
                 "content_hash": data_hash, "targets": list(adapter.spec.target_names),
                 "mask_mode": getattr(dataset, "mask_mode_info", None),
                 "bit_depth": getattr(dataset, "intensity_info", None),
                 "calibration": None if calibration is None else {
                     "name": Path(calibration.root).name, "n_samples": len(calibration)},
                 "shift": None if shift is None else {
                     "name": Path(shift.root).name, "n_samples": len(shift),
                     "content_hash": shift_hash}},
        "packages": package_versions(),
        "hardware": hardware(adapter.device),
        "wall_clock_s": {"stages": stages, "per_condition": per_condition_s},
        "cached_conditions": cached,
        "cached_stages": cached_stages,
        "not_applicable": record.not_applicable,
        "mitigation": mitigation_info,
        "undefined_targets": {},
        "intensity": intensity,
        "embeddings": embeddings,
    }
    _write_json(rundir.table(run_dir, rundir.RUN_JSON), run_info)
    return Predicted(run_dir, manifest, run_info, all_conditions)


def _embeddings(adapter: ModelAdapter, dataset: Dataset, run_dir: Path, manifest: Manifest,
                config: SuiteConfig, data_hash: str, cached_stages: list[str],
                progress: bool) -> dict[str, Any]:
    """``predictions/embeddings.npz`` (reused while the stored file is intact: the run
    directory's configuration fixes the model and the data); returns ``run.json:
    embeddings``."""
    path = rundir.embeddings_path(run_dir)
    key = stage_key("embeddings", data_hash)
    info = manifest.cached_stage("embeddings", key)
    if info is not None:
        cached_stages.append("embeddings")
        return info
    manifest.drop_stage("embeddings")
    manifest.claim(path)
    info = store_embeddings(adapter, dataset, run_dir, config, progress)
    manifest.record_stage("embeddings", key, [path] if path.exists() else [], info)
    return info


def _metadata_slices(metadata: pd.DataFrame | None) -> pd.DataFrame:
    """The ``meta.`` slice membership of the data's metadata (stored for ``medfail analyse``,
    whatever the config's ``slices``: a column whose values cannot name slices stores none
    when metadata slices were not asked for, and was refused by the membership when they were)."""
    try:
        return metadata_slices(metadata)
    except ValueError:
        return pd.DataFrame(columns=["id", "slice"])


def calibration_predictions(adapter: ModelAdapter, calibration: Dataset, config: SuiteConfig,
                            progress: bool) -> pd.DataFrame:
    """Clean predictions on the calibration split (long table, as ``predictions/clean``)."""
    calibration.validate(progress=progress)
    predictor = Predictor([adapter], config, spacing_mm=False)
    cond = Condition("calibration", "calibration", "calibration", 0)
    return pd.concat([predictor.classify(b, [s.image for s in b], cond)
                      for b in calibration.batches(config.batch_size)], ignore_index=True)


@dataclass
class _Record:
    """Conditions run so far, in job order: seconds, reused, not applicable, done."""

    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    done: list[Condition] = field(default_factory=list)


def _is_finished(manifest: Manifest, name: str, task: str) -> bool:
    """A condition is finished when its part (the commit marker, written last) is listed in
    the manifest, and it, the stored predictions and every other file of the condition exist
    and are readable (not truncated); anything less is recomputed."""
    run_dir = manifest.run_dir
    part = rundir.part_path(run_dir, name)
    stored = rundir.condition_path(run_dir, name, task)
    required = [part, stored] + ([] if task == "classification"
                                 else [rundir.condition_file(run_dir, name, ".pixel_bins.parquet")])
    if not manifest.owns(part) or not all(p.exists() for p in required):
        return False
    others = [p for p in condition_files(run_dir, name, task) if p.exists()]
    return all(damage(p) is None for p in dict.fromkeys([*required, *others]))


def _run_conditions(jobs: list[Job], engine: Executor, manifest: Manifest, task: str,
                    record: _Record, progress: bool, shift_key: str | None = None) -> None:
    """Reuse finished conditions, predict the others on ``engine``; record all in job order.
    Files are listed in the manifest before they are written. The second site's condition
    (data outside the identity) is reused only under its stage record ``shift_key``."""
    run_dir = manifest.run_dir

    def reusable(cond: Condition) -> bool:
        if cond is SHIFT and (shift_key is None or not _reuse_stage(manifest, SHIFT.name,
                                                                    shift_key, [])):
            return False
        return _is_finished(manifest, cond.name, task)

    todo = [j for j in jobs if not reusable(j.cond)]
    manifest.claim(*(p for j in todo for p in condition_files(manifest.run_dir, j.cond.name,
                                                               task)))
    finished = {}
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{task} suite",
              unit="condition", disable=not progress) as bar:
        for fin in engine.run(todo):
            if fin.per_sample is not None:
                seconds = rundir.part_path(run_dir, fin.cond.name, ".seconds")
                part = rundir.part_path(run_dir, fin.cond.name)
                manifest.claim(seconds, part)
                write_atomic(seconds, repr(fin.seconds))
                write_table(fin.per_sample, part)
                if fin.cond is SHIFT and shift_key is not None:
                    manifest.record_stage(SHIFT.name, shift_key, [part, *(
                        p for p in condition_files(run_dir, SHIFT.name, task) if p.is_file())])
            finished[fin.cond.name] = fin
            bar.update()
    for job in jobs:
        name = job.cond.name
        if name not in finished:
            record.cached.append(name)
            record.seconds[name] = _read_seconds(rundir.part_path(run_dir, name, ".seconds"))
        elif finished[name].per_sample is None:
            record.not_applicable[name] = finished[name].not_applicable
            continue
        else:
            record.seconds[name] = finished[name].seconds
        record.done.append(job.cond)


def _read_seconds(path: Path) -> float:
    try:
        return float(path.read_text())
    except (OSError, ValueError):  # a cache from before the timing was recorded
        return 0.0


def _choose_mitigations(run_dir: Path, adapter: ModelAdapter, calibration: Dataset | None,
                        conditions: list[Condition], membership: pd.DataFrame,
                        thresholds: dict[str, float] | float, config: SuiteConfig,
                        dims: int = 2) -> dict[str, Any]:
    """run.json's ``mitigation``: the top breaking condition (``worst_condition``; ``{}``
    when none breaks) and, for segmentation with a calibration split and one foreground class,
    the post-processing chosen on it (``postprocess``; the morphology is binary: it reads and
    writes one foreground map)."""
    task = adapter.spec.task
    per_sample = _per_sample(run_dir, conditions)
    metrics = metrics_table(run_dir, task, adapter.spec.multi_label, conditions, per_sample,
                            membership, thresholds, config.to_dict(), None, False)
    worst = worst_condition(breaking_table(metrics, task), conditions)
    if worst is None:
        return {}
    info: dict[str, Any] = {}
    if task != "classification" and calibration is not None \
            and len(adapter.spec.target_names) == 1:
        postprocess, cal_dice = _choose_postprocess(adapter, calibration, config, dims)
        info["postprocess"] = {**postprocess.to_dict(), "calibration_dice": cal_dice}
    info["worst_condition"] = worst.name
    return info


def _mitigation_jobs(info: dict[str, Any], conditions: list[Condition],
                     dataset: Dataset) -> list[Job]:
    """The mitigation conditions of run.json's ``mitigation`` (:func:`_choose_mitigations`):
    TTA on the worst condition, and the chosen post-processing when there is one."""
    worst = next((c for c in conditions if c.name == info.get("worst_condition")), None)
    if worst is None:
        return []
    jobs = [Job(Condition(f"tta|{worst.name}", "tta", "mitigation", worst.severity,
                          method="tta", base=worst), dataset)]
    if "postprocess" in info:
        params = PostProcess(**{k: info["postprocess"][k] for k in PostProcess().to_dict()})
        jobs.append(Job(Condition(f"morphology|{worst.name}", "morphology", "mitigation",
                                  worst.severity, method="morphology", base=worst),
                        dataset, params))
    return jobs


def _per_sample(run_dir: Path, conditions: Sequence[Condition]) -> pd.DataFrame:
    """The conditions' per-sample rows (``.parts/``), in condition order."""
    per_sample = pd.concat([pd.read_parquet(rundir.part_path(run_dir, c.name))
                            for c in conditions], ignore_index=True)
    return per_sample[PER_SAMPLE_COLUMNS]


def _choose_postprocess(adapter: ModelAdapter, calibration: Dataset, config: SuiteConfig,
                        dims: int = 2) -> tuple[PostProcess, float]:
    """Post-processing parameters chosen on the calibration split's clean predictions (the
    stored float16 values). Maps and masks stream through a temporary ``.npz`` each, so
    memory stays bounded by one sample (one volume) however large the split."""
    with tempfile.TemporaryDirectory(prefix="medfail-calibration-") as tmp:
        probs, masks = MapWriter(Path(tmp) / "probs.npz"), NpzWriter(Path(tmp) / "masks.npz")
        for batch in calibration.batches(1 if dims == 3 else config.batch_size):
            if adapter.spec.task == "promptable":
                out = adapter.predict_proba([s.image for s in batch],  # type: ignore[call-arg]
                                            [Predictor.prompts(s) for s in batch])
            else:
                out = with_spacings(adapter, [s.spacing for s in batch]).predict_proba(
                    [s.image for s in batch])
            for s, p in zip(batch, out, strict=True):
                probs.add(s.id, quantise(p)[0])
                masks.add(s.id, np.asarray(s.mask))
        probs.close()
        masks.close()
        with NpzSequence(probs.path) as p_seq, NpzSequence(masks.path) as m_seq:
            return choose_params(p_seq, m_seq)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))
