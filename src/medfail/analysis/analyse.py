"""``medfail analyse``: every analysis table rebuilt from a run directory alone.

:func:`analyse` reads only what ``medfail run``'s predict stage stored (``run.json``, the
per-sample rows, ``predictions/``, ``slices.parquet``) and rewrites ``slices.parquet``,
``metrics.parquet``, ``ranking.parquet``, ``calibration.parquet`` and ``mitigations.parquet``,
plus ``run.json``'s analysis entries (``thresholds``, ``temperatures``,
``temperature_warnings``, ``undefined_targets``, ``config``, ``analysis``). No model, no image.
``medfail run`` calls this same function after its predict stage, so the two cannot drift.

What the predict stage stores for it: ``per_sample.parquet`` (per-image metric rows of every
condition), ``predictions/index.parquet`` (GT mask features, spacing), the classification
predictions of every condition and of the calibration split (``predictions/calibration.parquet``:
thresholds and temperatures are refitted from it here), segmentation confidence and pixel-bin
files, ``predictions/metadata_slices.parquet`` (the ``meta.`` slices of the data's
metadata.csv), and
in ``run.json`` the config, the condition names, the model spec, per-condition wall-clock and the
``mitigation`` choice (worst condition, post-processing parameters).

Options: ``config`` may change only the analysis options (:data:`ANALYSIS_OPTIONS`); another
changed option needs new forward passes and is refused. ``metadata``: a CSV with ``id`` and extra
columns; its columns add ``meta.`` slices (a column already stored is replaced). Mitigations are
forward passes on the worst condition chosen when the run was made: when another configuration
makes another condition the worst, one ``warning:`` line says so and the table keeps the stored
mitigations. The case studies (``cases/``) need the images and are kept as stored.

This module never imports :mod:`medfail.engine` (the engine calls it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import (
    Estimate,
    Key,
    aggregate_classification,
    aggregate_per_image,
    undefined_targets,
)
from medfail.analysis.calibration import calibration_table, fit_temperatures
from medfail.analysis.discovery import discovery_tables
from medfail.analysis.mitigation import mitigation_table
from medfail.analysis.ranking import breaking_table
from medfail.analysis.run_tables import read_run_json, read_table
from medfail.analysis.segmentation_calibration import segmentation_calibration_table
from medfail.conditions import Condition
from medfail.errors import MedfailInputError, listing
from medfail.metrics.classification import threshold_max_f1
from medfail.slices.definitions import META, mask_slices, metadata_slices
from medfail.uncertainty.temperature import temperature_warnings

#: suite options that change only the analysis (everything else changes what the model computed)
ANALYSIS_OPTIONS = ("n_bootstrap", "threshold", "min_slice_n", "size_threshold_px", "slices",
                    "checks")
SHIFT_NAME = "shift_data"
#: method variants (besides ``<method>|<base>`` mitigations) and the condition they run on
METHOD_BASES = {"tta": "clean", "mc_dropout": "clean", "ensemble": "clean"}
PER_SAMPLE_COLUMNS = ["id", "condition", "test", "family", "severity", "target", "metric",
                      "value"]


def options(config: Any) -> dict[str, Any]:
    """A suite config (an object with ``to_dict()``, or a mapping) as a plain dict."""
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def calibration_thresholds(predictions: pd.DataFrame) -> dict[str, float]:
    """Per-target F1-maximising thresholds on the calibration split (never on test)."""
    out = {}
    for target, grp in predictions.groupby("target", sort=False):
        out[str(target)] = float(threshold_max_f1(grp["label"].to_numpy(),
                                                  grp["prob"].to_numpy()))
    return out


def decision_thresholds(cal_preds: pd.DataFrame | None, multi_label: bool, threshold: float,
                        targets: Sequence[str]) -> dict[str, float]:
    """``run.json: thresholds``: F1-maximising on the calibration split for multi-label
    classifiers that have one, else the config's ``threshold``; one value per target."""
    chosen: dict[str, float] | float = threshold
    if cal_preds is not None and multi_label:
        chosen = calibration_thresholds(cal_preds)
    return rundir.per_target_thresholds(chosen, targets)


def stored_conditions(names: Sequence[str], per_sample: pd.DataFrame, run_dir: Path,
                      task: str) -> list[Condition]:
    """The conditions named in ``run.json: conditions``, with test, family and severity from
    their stored rows; ``<method>|<base>`` and the uncertainty methods get their method and
    base (the rule ``medfail run`` names them by)."""
    info = per_sample.drop_duplicates("condition").set_index("condition")
    plain: dict[str, Condition] = {}
    out: list[Condition] = []
    for name in names:
        if name in info.index:
            row = info.loc[name]
            test, family, severity = str(row["test"]), str(row["family"]), int(row["severity"])
        else:  # no per-sample row (classification): the predictions carry the same columns
            row = read_table(rundir.condition_path(run_dir, name, task)).iloc[0]
            test, family, severity = str(row["test"]), str(row["family"]), int(row["severity"])
        method, base = "plain", None
        if "|" in name:
            method, base_name = name.split("|", 1)
            base = plain.get(base_name)
        elif family == "uncertainty" and name in METHOD_BASES:
            method, base = name, plain.get(METHOD_BASES[name])
        cond = Condition(name, test, family, severity, method, base)
        if method == "plain":
            plain[name] = cond
        out.append(cond)
    return out


def read_metadata(path: str | Path, ids: Sequence[str]) -> pd.DataFrame:
    """An extra metadata CSV (``id`` + columns); refused when unreadable, without ``id``, with
    duplicate ids or ids the run does not have."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"id": str})
    except FileNotFoundError:
        raise MedfailInputError(path, "file not found; --metadata needs a CSV with an `id` "
                                "column and the columns to slice by") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MedfailInputError(path, f"cannot read the metadata CSV ({exc})") from None
    if "id" not in frame.columns:
        raise MedfailInputError(path, f"no `id` column (found {listing(list(frame.columns))}); "
                                "the first row must name `id` and the columns to slice by")
    frame["id"] = frame["id"].astype(str)
    dup = frame.loc[frame["id"].duplicated(), "id"].tolist()
    if dup:
        raise MedfailInputError(path, f"duplicate ids {listing(dup, 3)}: one row per sample")
    unknown = sorted(set(frame["id"]) - {str(i) for i in ids})
    if unknown:
        raise MedfailInputError(path, f"{len(unknown)} ids not in this run's test data "
                                f"({listing(unknown, 3)}); ids are those of "
                                "predictions/index.parquet")
    return frame


def slice_table(index: pd.DataFrame, stored: pd.DataFrame | None, extra: pd.DataFrame | None,
                kinds: Sequence[str], threshold: float | None, unit: str,
                source: Path | None = None) -> pd.DataFrame:
    """``slices.parquet``: the ``gt.`` slices recomputed from the index, the stored ``meta.``
    slices (the data's metadata.csv: ``predictions/metadata_slices.parquet``) and ``extra``'s
    columns (a column of ``extra`` replaces the stored slices of that column)."""
    parts = [mask_slices(index, kinds, threshold, unit)]
    if "metadata" in kinds:
        meta = pd.DataFrame(columns=["id", "slice"]) if stored is None else \
            stored[stored["slice"].astype(str).str.startswith(f"{META}.")]
        if extra is not None:
            replaced = tuple(f"{META}.{c}=" for c in extra.columns if c != "id")
            meta = meta[~meta["slice"].astype(str).str.startswith(replaced)] if replaced \
                else meta
            try:
                parts.append(metadata_slices(extra))
            except ValueError as exc:
                raise MedfailInputError(source, str(exc)) from None
        parts.append(meta[["id", "slice"]])
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    out = out.drop_duplicates()
    return out.sort_values(["slice", "id"]).reset_index(drop=True)


def _conditions_table(conditions: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame([{"condition": c.name, "test": c.test, "family": c.family,
                          "severity": c.severity} for c in conditions])


def metrics_table(run_dir: Path, task: str, multi_label: bool, conditions: Sequence[Any],
                  per_sample: pd.DataFrame, membership: pd.DataFrame,
                  thresholds: Mapping[str, float] | float, config: Mapping[str, Any],
                  shift: Any | None, progress: bool,
                  draws: dict[Key, Estimate] | None = None) -> pd.DataFrame:
    """metrics.parquet rows: every condition and slice, plus ``shift_data`` vs in-domain
    (``shift``: the shift condition, or None)."""
    cond_table = _conditions_table(conditions)
    draws = {} if draws is None else draws
    common = {"n_bootstrap": config["n_bootstrap"], "seed": config["seed"],
              "min_slice_n": config["min_slice_n"]}
    main_ps = per_sample[per_sample["condition"] != SHIFT_NAME]
    if task == "classification":
        preds = pd.concat([read_table(rundir.condition_path(run_dir, c.name, task))
                           for c in conditions], ignore_index=True)
        metrics = aggregate_classification(
            preds, cond_table, multi_label, thresholds, membership=membership,
            progress=progress, draws_out=draws, **common)
    else:
        metrics = aggregate_per_image(main_ps, cond_table, membership=membership,
                                      draws_out=draws, **common)
    if shift is None:
        return metrics
    shift_table = _conditions_table([shift])
    if task == "classification":
        shift_preds = read_table(rundir.condition_path(run_dir, shift.name, task))
        shift_metrics = aggregate_classification(
            shift_preds, shift_table, multi_label, thresholds, reference=draws, **common)
    else:
        shift_metrics = aggregate_per_image(per_sample[per_sample["condition"] == shift.name],
                                            shift_table, reference=draws, **common)
    return pd.concat([metrics, shift_metrics], ignore_index=True)


def worst_condition(ranking: pd.DataFrame, conditions: Sequence[Any]) -> Any | None:
    """The top significant stress condition (mitigations are measured on it)."""
    by_name = {c.name: c for c in conditions}
    for r in ranking.itertuples():
        if r.kind == "condition" and r.significant and r.name in by_name:
            return by_name[r.name]
    return None


def _stress(conditions: Sequence[Condition]) -> list[Condition]:
    """The conditions the worst one is chosen among (as the predict stage chose it)."""
    return [c for c in conditions if c.method == "plain" and c.name != SHIFT_NAME
            and c.family not in ("uncertainty", "mitigation")]


def _check_options(run_dir: Path, stored: dict[str, Any], new: dict[str, Any],
                   source: str | None) -> list[str]:
    """The analysis options ``new`` changes; refuses a change that needs forward passes."""
    changed = sorted(k for k in set(stored) | set(new) if stored.get(k) != new.get(k))
    forward = [k for k in changed if k not in ANALYSIS_OPTIONS]
    if forward:
        raise MedfailInputError(
            source or run_dir, f"changes {listing(forward)}, which change what the model "
            f"computed (stored predictions were made with {', '.join(f'{k}={stored.get(k)!r}' for k in forward)}); "  # noqa: E501
            f"`medfail analyse` can change only {', '.join(ANALYSIS_OPTIONS)}: re-run "
            "`medfail run` for the others")
    return changed


def analyse(run_dir: str | Path, config: Any | None = None,
            metadata: str | Path | None = None, progress: bool = True,
            config_source: str | Path | None = None) -> dict[str, Any]:
    """Rebuild the analysis tables of ``run_dir`` from its stored files (no model, no image).

    ``config``: a suite config (``to_dict()``) or mapping; None = the one in ``run.json``.
    ``metadata``: an extra metadata CSV (``id`` + columns to slice by); ``config_source``: the
    file ``config`` came from (named in messages). Writes the tables and
    ``run.json``'s analysis entries, and returns those entries. Raises MedfailInputError for a
    missing or damaged stored file, an option that needs forward passes, or a bad CSV.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_path = rundir.table(run_dir, rundir.RUN_JSON)
    run = read_run_json(run_path)
    stored_cfg = dict(run["config"])
    source = str(config_source) if config_source is not None else getattr(config, "source", None)
    cfg = stored_cfg if config is None else {**stored_cfg, **options(config)}
    changed = _check_options(run_dir, stored_cfg, cfg, source)
    task = str(run["task"])
    spec = run["model"].get("spec", {})
    multi_label = bool(spec.get("multi_label", False))
    targets = [str(t) for t in run["data"].get("targets") or spec.get("target_names") or []]
    per_sample = read_table(rundir.table(run_dir, rundir.PER_SAMPLE))[PER_SAMPLE_COLUMNS]
    names = [str(n) for n in run["conditions"]]
    conditions = stored_conditions(names, per_sample, run_dir, task)
    shift = next((c for c in conditions if c.name == SHIFT_NAME), None)
    main = [c for c in conditions if c.name != SHIFT_NAME]

    index = read_table(rundir.split_paths(run_dir)["index"])
    spacing_mm = task != "classification" and bool(index["spacing"].notna().all())
    extra = None if metadata is None else read_metadata(metadata, index["id"].astype(str))
    meta_path = rundir.metadata_slices_path(run_dir)
    if not meta_path.exists():  # a run directory of medfail before issue 12: slices.parquet's
        meta_path = rundir.table(run_dir, rundir.SLICES)
    stored_slices = read_table(meta_path) if meta_path.exists() else None
    membership = slice_table(index, stored_slices, extra, cfg["slices"],
                             cfg["size_threshold_px"], "mm2" if spacing_mm else "px",
                             None if metadata is None else Path(metadata))

    cal_path = rundir.condition_path(run_dir, rundir.CALIBRATION_SPLIT, "classification")
    cal_preds = read_table(cal_path) if task == "classification" and cal_path.exists() \
        else None
    thresholds = decision_thresholds(cal_preds, multi_label, float(cfg["threshold"]), targets) \
        if task == "classification" else rundir.per_target_thresholds(cfg["threshold"], targets)

    draws: dict[Key, Estimate] = {}
    metrics = metrics_table(run_dir, task, multi_label, main, per_sample, membership,
                            thresholds, cfg, shift, progress, draws)
    ranking = breaking_table(metrics, task)
    temperatures = None
    if task == "classification":
        if cal_preds is not None:
            temperatures = fit_temperatures(cal_preds, multi_label)
            for message in temperature_warnings(temperatures).values():
                print(f"warning: {message}", file=sys.stderr, flush=True)
        preds = pd.concat([read_table(rundir.condition_path(run_dir, n, task)) for n in names],
                          ignore_index=True)
        cal_table = calibration_table(preds, multi_label, thresholds, temperatures)
    else:
        cal_table = segmentation_calibration_table(run_dir, main, per_sample)
    seconds = {str(k): float(v) for k, v in
               (run.get("wall_clock_s") or {}).get("per_condition", {}).items()}
    mitigations = mitigation_table(task, main, draws, cal_table, ranking, seconds,
                                   SimpleNamespace(**cfg))
    mitigation = run.get("mitigation") or {}
    if (changed or extra is not None) and mitigation.get("worst_condition"):
        _warn_worst(run_dir, task, multi_label, main, per_sample, membership, thresholds, cfg,
                    mitigation["worst_condition"])

    discovery, discovery_features = discovery_tables(
        run_dir, task, multi_label, per_sample, membership, int(cfg["seed"]),
        int(cfg["n_bootstrap"]), thresholds)
    issues = label_issue_table(run_dir, task, multi_label, cal_preds)

    for name, frame in ((rundir.SLICES, membership), (rundir.METRICS, metrics),
                        (rundir.RANKING, ranking), (rundir.CALIBRATION, cal_table),
                        (rundir.MITIGATIONS, mitigations), (rundir.DISCOVERY, discovery),
                        (rundir.DISCOVERY_FEATURES, discovery_features),
                        (rundir.LABEL_ISSUES, issues)):
        rundir.write_table(frame, rundir.table(run_dir, name))
    stages = dict((run.get("wall_clock_s") or {}).get("stages", {}))
    stages["aggregate"] = time.perf_counter() - t0
    updates = {
        "config": cfg,
        "thresholds": thresholds,
        "temperatures": temperatures,
        "temperature_warnings": temperature_warnings(temperatures),  # T on a search bound
        "undefined_targets": undefined_targets(run_dir),  # one class: a warning on stderr
        "analysis": {"changed_options": changed,
                     "metadata": None if metadata is None else Path(metadata).name,
                     "metadata_columns": [] if extra is None else
                     [str(c) for c in extra.columns if c != "id"]},
        "wall_clock_s": {**(run.get("wall_clock_s") or {}), "stages": stages},
    }
    rundir.write_atomic(run_path, json.dumps({**run, **updates}, indent=2, default=str))
    return updates


def label_issue_table(run_dir: Path, task: str, multi_label: bool,
                      cal_preds: pd.DataFrame | None) -> pd.DataFrame:
    """``label_issues.parquet``: cleanlab's label-issue ranking (:mod:`.label_issues`) of the
    calibration split's labels (classification with a calibration split), else of the test
    labels (classification) or masks (segmentation, from the stored clean maps); the model
    never trained on either, so the probabilities are out of sample. Column ``split`` says
    which."""
    from medfail.analysis.label_issues import (
        classification_label_issues,
        segmentation_label_issues,
    )

    if task == "classification":
        split = rundir.CALIBRATION_SPLIT if cal_preds is not None else rundir.TEST_SPLIT
        preds = cal_preds if cal_preds is not None else read_table(
            rundir.condition_path(run_dir, "clean", task))
        return classification_label_issues(preds, multi_label).assign(split=split)
    with np.load(rundir.condition_path(run_dir, "clean", task)) as probs, \
            np.load(rundir.split_paths(run_dir)["ground_truth"]) as masks:
        found = segmentation_label_issues(probs, masks)
    return found.assign(split=rundir.TEST_SPLIT)


def _warn_worst(run_dir: Path, task: str, multi_label: bool,
                conditions: Sequence[Condition], per_sample: pd.DataFrame,
                membership: pd.DataFrame, thresholds: Mapping[str, float],
                cfg: Mapping[str, Any], stored_worst: str) -> None:
    """One warning line when this configuration picks another worst condition than the one
    the stored mitigations were run on (their forward passes would be new)."""
    stress = _stress(conditions)
    metrics = metrics_table(run_dir, task, multi_label, stress,
                            per_sample[per_sample["condition"].isin([c.name for c in stress])],
                            membership, thresholds, cfg, None, False)
    worst = worst_condition(breaking_table(metrics, task), stress)
    if worst is None or worst.name == stored_worst:
        return
    print(f"warning: with these options the worst condition is {worst.name}, but the stored "
          f"mitigations were run on {stored_worst}; measuring them on {worst.name} needs new "
          "forward passes (re-run `medfail run`): mitigations.parquet keeps the stored ones",
          file=sys.stderr, flush=True)
