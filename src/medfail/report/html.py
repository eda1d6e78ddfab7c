"""Render ``report.html`` from a run directory alone (works with the model file deleted).

The HTML is self-contained: figures are written to ``figures/`` and embedded as base64 data URIs,
so the file opens offline and can be mailed as one attachment.
"""

from __future__ import annotations

import json
import math
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from medfail.analysis.aggregate import ALL, MACRO, harmful, macro_coverage
from medfail.analysis.calibration import DEFERRED, decision_risk_coverage, pooled_decisions
from medfail.analysis.case_studies import diagnose
from medfail.analysis.checklist import build_checklist
from medfail.analysis.discovery import (
    CONFIRM,
    DISCOVER,
    EXAMPLES_PER_SLICE,
    MAX_SLICES_SHOWN,
    confirm_members,
)
from medfail.analysis.ranking import (
    breaking_sentence,
)
from medfail.analysis.run_tables import RunTables
from medfail.analysis.segmentation_calibration import ACCEPTABLE_DICE, image_risk_coverage
from medfail.analysis.taxonomy import build_taxonomy
from medfail.report.explorer import render_explorer
from medfail.report.figures import (
    binned_reliability_plot,
    calibration_drift_plot,
    classification_case_figure,
    degradation_plot,
    embedding_map_plot,
    prompt_sensitivity_plot,
    reliability_plot,
    risk_coverage_plot,
    segmentation_case_figure,
    slice_forest_plot,
    thumbnail_grid,
)
from medfail.report.formatting import (
    ci_excludes,
    figure,
    fmt,
    fmt_ci,
    fmt_delta,
    metric_label,
)
from medfail.report.pdf import render_pdf
from medfail.rundir import (
    CALIBRATION,
    CASES_JSON,
    EXAMPLES,
    EXPLORER_HTML,
    MITIGATIONS,
    PER_SAMPLE,
    REPORT_HTML,
    REPORT_PDF,
    TEST_SPLIT,
    ReportOutputs,
    case_path,
    condition_file,
    condition_path,
    figures_dir,
)
from medfail.rundir import table as run_file
from medfail.uncertainty.temperature import (
    temperature_at_bound,
    temperature_warnings,
)

FAMILY_TITLES = {"corruption": "Common corruptions", "domain_shift": "Domain shift",
                 "prompt": "Prompt perturbations"}
SECONDARY = {"classification": ["auprc", "sens_at_95spec", "f1"],
             "segmentation": ["lesion_f1", "nsd", "hd95", "boundary_f1", "jaccard"],
             "promptable": ["lesion_f1", "nsd", "hd95", "boundary_f1", "jaccard"]}


CI_FOOTNOTE = ("* The 95% bootstrap interval excludes its point estimate in {n} result{s} of "
               "this run ({examples}). A percentile interval can do this on tiny or skewed "
               "samples, and when resamples average fewer targets (macro). It is shown as "
               "computed (metrics.parquet keeps it); read such a result as unreliable.")
#: (estimate, interval low, interval high, what) column triples of metrics.parquet
_INTERVALS = (("value", "ci_low", "ci_high", ""), ("delta_vs_clean", "delta_ci_low",
                                                    "delta_ci_high", "Δ vs clean "),
              ("gap_vs_all", "gap_ci_low", "gap_ci_high", "gap vs all "))


def _ci_footnote(metrics: pd.DataFrame, target: str, mitigations: list[dict[str, Any]],
                 limit: int = 3) -> str:
    """The footnote for intervals that exclude their estimate (report target), or ''."""
    m = metrics[metrics["target"] == target]
    found = []
    for est, lo, hi, what in _INTERVALS:
        for r in m[ci_excludes(m[est], m[lo], m[hi])].itertuples():
            where = r.condition + ("" if r.slice == ALL else f", {r.slice}")
            found.append(f"{r.metric} {what}{where}: {getattr(r, est):.3f} vs "
                         f"[{getattr(r, lo):.3f}, {getattr(r, hi):.3f}]")
    found += [f"mitigation {r['mitigation']}: effect {r['effect']} vs {r['ci'][:-1]}"
              for r in mitigations if r["ci"].endswith("*")]
    if not found:
        return ""
    shown = "; ".join(found[:limit]) + (f"; and {len(found) - limit} more"
                                        if len(found) > limit else "")
    return CI_FOOTNOTE.format(n=len(found), s="" if len(found) == 1 else "s", examples=shown)


def _one_class_reason(metrics: pd.DataFrame, target: str, condition: str,
                      slice_name: str) -> str:
    """Why a target's set-level metrics are undefined, from its own rows (AUPRC needs only
    positives, AUROC both classes; F1 is NaN when there is no positive and none predicted)."""
    rows = metrics[(metrics["target"] == target) & (metrics["condition"] == condition)
                   & (metrics["slice"] == slice_name)].set_index("metric")["value"]
    where = ("the second site's data" if condition == "shift_data" else "test") \
        if slice_name == ALL else f"slice {slice_name}"
    values = pd.to_numeric(rows, errors="coerce")
    if "auprc" in values.index and not np.isfinite(values["auprc"]):
        return f"no positives in {where}"
    if "auroc" in values.index and not np.isfinite(values["auroc"]):
        return f"no negatives in {where}"
    return f"no positive and none predicted in {where}"


def _macro_notes(metrics: pd.DataFrame, metric_list: list[str], conditions: list[str],
                 slice_name: str = ALL) -> list[str]:
    """Where a macro value leaves targets out: ``macro over 2 of 3 targets; auroc, auprc
    undefined for 'cavity' (no positives in test)``. Metrics with the same note are merged; a
    note that does not hold for every condition names the conditions it holds for."""
    held: dict[tuple[str, str], dict[str, list[str]]] = {}
    for metric in metric_list:
        for cond in conditions:
            kept, total, left = macro_coverage(metrics, metric, cond, slice_name)
            if left:
                named = ", ".join(f"'{t}' ({_one_class_reason(metrics, t, cond, slice_name)})"
                                  for t in left)
                key = (f"macro over {kept} of {total} targets", named)
                held.setdefault(key, {}).setdefault(metric, []).append(cond)
    notes = []
    for (head, named), per_metric in held.items():
        groups: dict[tuple[str, ...], list[str]] = {}
        for metric, conds in per_metric.items():
            groups.setdefault(tuple(conds), []).append(metric)
        for conds, names in groups.items():
            where = "" if len(conds) == len(conditions) else f" (at {', '.join(conds)})"
            notes.append(f"{head}; {', '.join(names)} undefined for {named}{where}")
    return notes


def _slice_caption(metrics: pd.DataFrame, metric: str, target: str, condition: str,
                   caption: str) -> str:
    """A slice figure's caption, naming the slices whose interval excludes the estimate and
    those whose macro value leaves targets out (undefined there)."""
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["condition"] == condition) & (metrics["slice"] != ALL)]
    excluded = m.loc[ci_excludes(m["value"], m["ci_low"], m["ci_high"]), "slice"].tolist()
    if excluded:
        caption += f"; * 95% CI excludes the estimate: {', '.join(excluded)}"
    if target == MACRO:
        fewer = []
        for sl in m["slice"]:
            kept, total, left = macro_coverage(metrics, metric, condition, sl)
            if left:
                fewer.append(f"{sl} ({kept} of {total}; undefined: {', '.join(left)})")
        if fewer:
            caption += f"; macro over fewer targets in: {'; '.join(fewer)}"
    return caption


def _distance_text(run: dict[str, Any]) -> str:
    """Section 1's 'distances in ...': the unit of each distance metric (metric_units), or
    the ``distance_unit`` of a run directory written before them; empty without distances."""
    units = {m: u for m, u in (run.get("metric_units") or {}).items()
             if m in ("boundary_f1", "nsd", "hd95") and isinstance(u, dict) and "unit" in u}
    if not units:  # classification has no distance metric; older runs have distance_unit
        return "" if "metric_units" in run else f"distances in {run.get('distance_unit', 'px')}"
    groups: dict[str, list[str]] = {}
    for m, u in units.items():
        groups.setdefault(str(u["unit"]), []).append(
            f"{m} τ = {u['tolerance']:g}" if "tolerance" in u else m)
    return "distances in " + " and ".join(
        f"{unit} ({', '.join(names)})" for unit, names in groups.items())


def _family_table(metrics: pd.DataFrame, family: str, metric_list: list[str],
                  target: str, units: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows = conditions of one family (plus clean); cells = value and Δ [CI] per metric
    (headers with the metric's unit, :func:`metric_label`)."""
    m = metrics[(metrics["slice"] == ALL) & (metrics["target"] == target)
                & metrics["metric"].isin(metric_list)]
    conds = m[(m["family"] == family) | (m["condition"] == "clean")]
    rows = []
    for cond, grp in conds.groupby("condition", sort=False):
        by_metric = grp.set_index("metric")
        cells = []
        for metric in metric_list:
            if metric not in by_metric.index:
                cells.append({"text": "", "cls": ""})
                continue
            r = by_metric.loc[metric]
            if cond == "clean":
                cells.append({"text": f"{fmt(r.value)} {fmt_ci(r.ci_low, r.ci_high, r.value)}",
                              "cls": ""})
                continue
            cells.append({"text": f"{fmt(r.value)} (Δ {fmt_delta(r.delta_vs_clean)} "
                                  f"{fmt_ci(r.delta_ci_low, r.delta_ci_high, r.delta_vs_clean)})",
                          "cls": "drop" if harmful(metric, r.delta_ci_low, r.delta_ci_high)
                          else ""})
        rows.append({"condition": cond, "cells": cells})
    notes = _macro_notes(metrics, metric_list, list(dict.fromkeys(conds["condition"]))) \
        if target == MACRO else []
    return {"metrics": [metric_label(m, units) for m in metric_list], "rows": rows,
            "notes": notes}


def _ranking_rows(ranking: pd.DataFrame, limit: int = 15) -> list[dict[str, Any]]:
    out = []
    for r in ranking.head(limit).itertuples():
        out.append({"rank": r.rank, "kind": r.kind, "name": r.name, "family": r.family,
                    "reference": fmt(r.reference), "value": fmt(r.value),
                    "effect": fmt_delta(r.effect),
                    "ci": fmt_ci(r.effect_ci_low, r.effect_ci_high, r.effect),
                    "cls": "drop" if r.significant else "", "n": r.n,
                    "flag": "few cases" if r.small_slice else ""})
    return out


def _method_conditions(table: pd.DataFrame, worst: str | None) -> list[str]:
    """Conditions compared in the method table: clean, the extra-pass methods, the worst one."""
    wanted = ["clean", "tta", "mc_dropout", "ensemble"] + (
        [worst, f"tta|{worst}"] if worst else [])
    present = set(table["condition"])
    return [c for c in wanted if c in present]


def _mitigation_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_file(run_dir, MITIGATIONS)
    if not path.exists():
        return []
    rows = []
    for r in pd.read_parquet(path).itertuples():
        ci = "" if math.isnan(r.ci_low) or math.isnan(r.ci_high) else fmt_ci(r.ci_low, r.ci_high,
                                                                              r.effect)
        cost = []
        if r.forward_passes:
            cost.append(f"{r.forward_passes} passes")
        if not math.isnan(r.time_ratio) and r.time_ratio > 0:
            cost.append(f"×{r.time_ratio:.1f} time")
        if r.coverage < 1:
            cost.append(f"coverage {r.coverage:.0%}")
        rows.append({"mitigation": r.mitigation, "base": r.base, "slice": r.slice,
                     "metric": r.metric, "before": fmt(r.before), "after": fmt(r.after),
                     "effect": fmt_delta(r.effect), "ci": ci,
                     "helps": "yes" if r.helps else "no", "cls": "" if r.helps else "drop",
                     "cost": ", ".join(cost) or "negligible", "note": r.note})
    return rows


CAL_METRICS = ["ece", "adaptive_ece", "brier", "nll", "aurc", "eaurc", "augrc", "risk_at_80",
               "coverage_at_risk_5", "sens_all", "sens_at_80"]


def _calibration_section(run_dir: Path, run: dict[str, Any],
                         worst: str | None) -> dict[str, Any] | None:
    """Reliability diagrams, risk-coverage, drift and the method table (classification)."""
    table_path = run_file(run_dir, CALIBRATION)
    if not table_path.exists():
        return None
    table = pd.read_parquet(table_path)
    if table.empty:
        return None
    target = "macro" if "macro" in set(table["target"]) else str(table["target"].iloc[0])
    figdir = figures_dir(run_dir)
    figs = []
    clean = pd.read_parquet(condition_path(run_dir, "clean", "classification"))
    decided = (bool(run["model"]["spec"]["multi_label"]), run.get("thresholds"),
               run.get("temperatures"))
    pooled = pooled_decisions(clean, *decided)
    path = reliability_plot(pooled.outcome, pooled.probabilities,
                            figdir / "reliability_clean.png",
                            "reliability on clean test images (all targets pooled)")
    figs.append(figure(path, run_dir, "reliability diagrams, clean"))
    curves = {}
    for cond in ["clean"] + ([worst] if worst else []):
        pred = clean if cond == "clean" else pd.read_parquet(
            condition_path(run_dir, cond, "classification"))
        curves[cond] = decision_risk_coverage(pred, *decided)
    path = risk_coverage_plot(curves, figdir / "risk_coverage.png",
                              "risk-coverage: defer the least confident cases")
    figs.append(figure(path, run_dir, "risk-coverage curves"))
    if (table["severity"] > 0).any():
        path = calibration_drift_plot(table, "ece", target, figdir / "calibration_drift.png")
        figs.append(figure(path, run_dir, "ECE vs severity"))
    rows = []
    for cond in _method_conditions(table, worst):
        sub = table[(table["condition"] == cond) & (table["target"] == target)]
        for method, grp in sub.groupby("method", sort=False):
            vals = grp.set_index("metric")["value"]
            rows.append({"condition": cond, "method": method, "cost": _cost(run, cond),
                         "cells": [fmt(float(vals[m])) if m in vals.index else ""
                                   for m in CAL_METRICS]})
    clean_max = table[(table["condition"] == "clean") & (table["target"] == target)
                      & (table["method"] == "max_prob")].set_index("metric")["value"]
    sentence = ""
    if {"sens_all", "sens_at_80"} <= set(clean_max.index):
        sentence = (f"On clean images, deferring the {DEFERRED:.0%} least confident cases "
                    f"(chosen without the label) changes sensitivity ({target}) from "
                    f"{clean_max['sens_all']:.2f} to {clean_max['sens_at_80']:.2f} among the "
                    f"kept positives and the error rate of the kept cases to "
                    f"{clean_max['risk_at_80']:.3f}.")
    temps = run.get("temperatures")
    bound = temperature_warnings(temps)
    return {"figures": figs, "metrics": CAL_METRICS, "rows": rows, "sentence": sentence,
            "temperatures": ", ".join(
                f"{k} {v:.2f}" + (f" (WARNING: on the {temperature_at_bound(v)} bound of the "
                                  "search, not an NLL optimum; read its ECE/NLL with care)"
                                  if k in bound else "")
                for k, v in temps.items()) if temps
            else "not fitted (no --calibration split)"}


SEG_CAL_METRICS = ["aurc", "eaurc", "augrc", "risk_at_80", "coverage_at_risk_10", "dice_all",
                   "dice_at_80", "acceptable_at_80"]


def _cost(run: dict[str, Any], cond: str) -> str:
    """Wall-clock of a condition relative to clean (the extra cost of a method)."""
    per = run["wall_clock_s"]["per_condition"]
    if cond == "clean" or not per.get("clean") or cond not in per:
        return "×1.0" if cond == "clean" else ""
    return f"×{per[cond] / per['clean']:.1f}"


def _segmentation_calibration_section(run_dir: Path, run: dict[str, Any], worst: str | None,
                                      target: str) -> dict[str, Any] | None:
    """Pixel reliability, image-level risk-coverage by confidence signal, drift, method table."""
    table_path = run_file(run_dir, CALIBRATION)
    if not table_path.exists():
        return None
    table = pd.read_parquet(table_path)
    table = table[table["target"] == target]
    if table.empty:
        return None
    figdir = figures_dir(run_dir)
    conds = ["clean"] + ([worst] if worst else [])
    bins = {c: pd.read_parquet(condition_file(run_dir, c, ".pixel_bins.parquet")) for c in conds}
    bins = {c: b[(b["target"] == target) & (b["region"] == "band")] for c, b in bins.items()}
    figs = [figure(binned_reliability_plot(bins, figdir / "pixel_reliability.png",
                                            "per-pixel reliability (pixels within 5 px of GT "
                                            "or prediction)"),
                    run_dir, "per-pixel reliability")]
    ps = pd.read_parquet(run_file(run_dir, PER_SAMPLE))
    conf = pd.read_parquet(condition_file(run_dir, "clean", ".confidence.parquet"))
    curves = image_risk_coverage(conf, ps, "clean", target)
    path = risk_coverage_plot(curves, figdir / "risk_coverage.png",
                              "defer images by confidence (risk = 1 - Dice of kept images)")
    figs.append(figure(path, run_dir, "image-level risk-coverage, clean"))
    pix = table[table["metric"] == "pixel_ece_band"].assign(method="max_prob", metric="ece")
    if (pix["severity"] > 0).any():
        path = calibration_drift_plot(pix, "ece", target, figdir / "calibration_drift.png")
        figs.append(figure(path, run_dir, "per-pixel ECE vs severity"))
    rows = []
    for cond in _method_conditions(table, worst):
        sub = table[table["condition"] == cond]
        pe = sub.loc[sub["metric"] == "pixel_ece_band", "value"]
        for method, grp in sub[sub["method"] != "pixel"].groupby("method", sort=False):
            vals = grp.set_index("metric")["value"]
            rows.append({"condition": cond, "method": method, "cost": _cost(run, cond),
                         "cells": [fmt(float(pe.iloc[0])) if len(pe) else ""] +
                         [fmt(float(vals[m])) if m in vals.index else ""
                          for m in SEG_CAL_METRICS]})
    clean = table[(table["condition"] == "clean") & (table["method"] == "mask_confidence")
                  ].set_index("metric")["value"]
    sentence = ""
    if {"dice_all", "dice_at_80"} <= set(clean.index):
        sentence = (f"On clean images, deferring the {DEFERRED:.0%} of images with the lowest "
                    f"mask confidence changes mean Dice from {clean['dice_all']:.3f} to "
                    f"{clean['dice_at_80']:.3f}; {clean['acceptable_at_80']:.0%} of the kept "
                    f"images reach Dice ≥ {ACCEPTABLE_DICE:g}.")
    return {"figures": figs, "metrics": ["pixel_ece_band", *SEG_CAL_METRICS], "rows": rows,
            "sentence": sentence, "temperatures": "not applied to segmentation in this run"}


def _problem(run: dict[str, Any], task: str, primary: str, target: str,
             metrics: pd.DataFrame) -> str:
    """Section 1's paragraph: what the model does, on what, and how it was tested."""
    spec = run["model"]["spec"]
    kind = {"classification": f"{'multi-label' if spec.get('multi_label') else 'multi-class'} "
                              "classifier",
            "segmentation": "segmenter", "promptable": "promptable segmenter (box/point prompts)"}
    clean = metrics[(metrics["condition"] == "clean") & (metrics["metric"] == primary)
                    & (metrics["target"] == target) & (metrics["slice"] == ALL)]
    clean_text = ""
    if len(clean):
        r = clean.iloc[0]
        note = "; ".join(_macro_notes(metrics, [primary], ["clean"])) if target == MACRO else ""
        ci = fmt_ci(r["ci_low"], r["ci_high"], r["value"])
        clean_text = (f" Clean {primary} ({target}): {fmt(r['value'])}"
                      + ("" if ci == "n/a" else f" {ci}")
                      + (f" ({note})" if note else "") + ".")
    n_stress = sum(1 for c in run["conditions"] if "@" in c and "|" not in c)
    return (f"A {kind[task]} predicting {', '.join(run['data']['targets'])} is tested on "
            f"{run['data']['n_samples']} images under {n_stress} stress conditions (stress tests × "
            f"severities), slices by lesion size, location, shape and metadata, "
            f"calibration and uncertainty methods, and mitigations on its worst condition."
            + clean_text)


def _figures_in_order(groups: list[list[dict[str, Any]]]) -> dict[str, int]:
    """Number every figure in display order; returns stem -> figure number."""
    numbers: dict[str, int] = {}
    for group in groups:
        for f in group:
            f["num"] = numbers.setdefault(f["stem"], len(numbers) + 1)
    return numbers


def _sized(fig: dict[str, str], size: str) -> dict[str, Any]:
    return {**fig, "size": size, "stem": Path(fig["file"]).stem}


def _spacing(tables: RunTables, sid: str) -> tuple[float, ...] | None:
    """The sample's spacing (mm per axis) from the run's index, None when unknown."""
    index = tables.index
    row = index.loc[index["id"].astype(str) == str(sid), "spacing"]
    value = row.iloc[0] if len(row) else None
    return None if value is None or np.ndim(value) == 0 else tuple(float(v) for v in value)


def _case_studies(tables: RunTables, checklist: dict[str, Any], figdir: Path,
                  run_dir: Path) -> list[dict[str, Any]]:
    path = run_file(run_dir, CASES_JSON)
    if not path.exists():
        return []
    out = []
    for k, case in enumerate(json.loads(path.read_text())):
        arrays = dict(np.load(case_path(run_dir, k)))
        text = diagnose(tables, case, checklist["deferral_threshold"])
        fig_path = figdir / f"case_{k + 1}.png"
        if tables.task == "classification":
            clean = tables.predictions("clean")
            cond = tables.predictions(case["condition"])
            probs = clean[clean["id"] == case["id"]][["target", "prob", "label"]].merge(
                cond[cond["id"] == case["id"]][["target", "prob"]], on="target",
                suffixes=("_clean", ""))
            classification_case_figure(arrays, probs, case["target"], fig_path)
        else:
            segmentation_case_figure(arrays, fig_path, _spacing(tables, case["id"]))
        out.append({**text, "figure": _sized(figure(fig_path, run_dir, f"case {k + 1}: "
                                                     f"{case['id']} under {case['condition']}"),
                                             "full")})
    return out


def _checklist_view(checklist: dict[str, Any]) -> dict[str, Any]:
    drift = checklist["drift"]
    fired = [r["condition"] for r in drift["rows"] if r["fires"]]
    silent = [r["condition"] for r in drift["rows"] if not r["fires"]]
    text = (f"alarm when the mean confidence of {drift['window']} consecutive cases falls under "
            f"{drift['limit']:.3f} (clean mean {drift['clean_mean']:.3f}). "
            + (f"It fires for {', '.join(fired)}" if fired else "It fires for no breaking test")
            + (f"; it stays silent for {', '.join(silent)} — these need the input monitors."
               if silent else "."))
    summary: dict[str, dict[str, Any]] = {}
    for c in checklist["checks"]:
        row = summary.setdefault(c["check"], {"check": c["check"], "n_pass": 0, "n_fail": 0,
                                              "failing": []})
        row["n_pass" if c["verdict"] == "pass" else "n_fail"] += 1
        if c["verdict"] == "fail":
            row["failing"].append(c["condition"])
    for row in summary.values():
        row["cls"] = "fail" if row["n_fail"] else "pass"
        row["failing"] = ", ".join(row["failing"])
    return {**checklist, "drift_text": text, "check_summary": list(summary.values()),
            "monitors": checklist["monitors"][:8]}


def _taxonomy_rows(entries: list[Any], numbers: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        effect = "" if e.effect is None else f"{e.effect:+.3f}" if e.ci_low is None \
            else f"{e.effect:+.3f} {fmt_ci(e.ci_low, e.ci_high, e.effect)}"
        if e.ci_low is None and e.effect is not None and e.status != "breaks":
            effect = ""
        rows.append({**e.to_dict(), "effect": effect,
                     "cls": {"breaks": "breaks", "not probed": "notprobed"}.get(e.status, ""),
                     "link": numbers.get(e.figure or "")})
    return rows


# ------------------------------------------------------------------ discovered slices (issue 16)
#: at most this many confirmed slices in the main text's table (the rest: Appendix A)
MAIN_CONFIRMED = 5
LABEL_ISSUES_TABLE = 10


def _error_text(task: str, run: dict[str, Any]) -> str:
    """What "error" means in discovery (medfail.analysis.discovery, step 1)."""
    if task == "classification":
        multi = bool(((run.get("model") or {}).get("spec") or {}).get("multi_label"))
        return ("misclassification per sample and target at the run's decision threshold "
                "(1 = wrong; a slice's error is its error rate)" if multi else
                "misclassification per sample (argmax ≠ true class; a slice's error is its "
                "error rate)")
    return "1 − Dice per image and foreground target"


def _examples(run_dir: Path) -> dict[str, np.ndarray]:
    """``cases/examples.npz`` (``<split>__<id>`` → uint8 thumbnail); {} when absent or
    unreadable (old runs, or a run that stored only some ids)."""
    path = run_file(run_dir, EXAMPLES)
    if not path.exists():
        return {}
    try:
        with np.load(path) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}


def _candidate_row(r: Any) -> dict[str, Any]:
    ci = fmt_ci(r.ci_low, r.ci_high, r.gap)
    described = isinstance(r.description, str) and r.description
    return {"rank": int(r.rank), "slice": str(r.slice),
            "description": r.description if described else str(r.slice),
            "source": str(r.source), "n_discover": int(r.n_discover),
            "error_discover": fmt(r.error_discover), "gap_discover": fmt_delta(r.gap_discover),
            "n_confirm": int(r.n_confirm), "error_confirm": fmt(r.error_confirm),
            "error_rest": fmt(r.error_rest), "gap": fmt_delta(r.gap), "ci": ci,
            "level": f"{r.ci_level:.2%}" if math.isfinite(r.ci_level) else "n/a",
            "confirmed": "yes" if bool(r.confirmed) else "no",
            "cls": "drop" if bool(r.confirmed) else ""}


def _label_issue_rows(issues: pd.DataFrame | None, task: str, shown: set[str],
                      limit: int = LABEL_ISSUES_TABLE) -> list[dict[str, Any]]:
    if issues is None or issues.empty:
        return []
    rows = []
    for r in issues.sort_values("rank").head(limit).to_dict("records"):
        key = f"{r.get('split', TEST_SPLIT)}__{r['id']}"
        row = {"rank": int(r["rank"]), "id": str(r["id"]), "split": str(r.get("split", "")),
               "quality": fmt(float(r["quality"])), "issue": "yes" if bool(r["issue"]) else "no",
               "cls": "drop" if bool(r["issue"]) else "", "thumb": "yes" if key in shown else ""}
        if task == "classification":
            row.update(target=str(r["target"]), given=str(r["given_label"]),
                       prob=fmt(float(r["prob"])))
        else:
            row.update(pixels=str(int(r["n_issue_pixels"])))
        rows.append(row)
    return rows


def _discovery_section(tables: RunTables, run_dir: Path, figdir: Path,
                       ) -> dict[str, Any]:
    """Section 3's "Discovered slices" part, its Appendix A tables and figures.

    ``ran`` False for run directories made before slice discovery (no discovery.parquet)."""
    run, task = tables.run, tables.task
    found, features, issues = tables.discovery, tables.discovery_features, tables.label_issues
    out: dict[str, Any] = {"ran": found is not None, "error": _error_text(task, run),
                           "seed": run.get("seed"), "main_figures": [],
                           "appendix_figures": [], "label_figures": [],
                           "issues_ran": issues is not None}
    thumbs = _examples(run_dir)
    if issues is not None:
        out["label_issues"] = _label_issue_rows(issues, task, set(thumbs))
        out["n_flagged"] = int(issues["issue"].astype(bool).sum()) if len(issues) else 0
        out["n_ranked"] = len(issues)
        items = [(thumbs[k], f"#{r['rank']} {r['id']}")
                 for r in out["label_issues"] if (k := f"{r['split']}__{r['id']}") in thumbs]
        if items:
            path = thumbnail_grid([("", items[:6])], figdir / "label_issue_examples.png")
            out["label_figures"].append(_sized(figure(
                path, run_dir, "label-issue candidates, lowest label quality first "
                "(#rank id)"), "half"))
    if found is None:
        return out
    if features is not None and "half" in features:
        halves = features["half"].value_counts()
        out["n_discover"] = int(halves.get(DISCOVER, 0))
        out["n_confirm"] = int(halves.get(CONFIRM, 0))
    out["n_tested"] = len(found)
    out["level"] = (f"{float(found['ci_level'].iloc[0]):.2%}" if len(found) else "")
    out["candidates"] = [_candidate_row(r) for r in found.sort_values("rank").itertuples()]
    confirmed = tables.confirmed_slices
    out["confirmed"] = [_candidate_row(r) for r in confirmed.head(MAIN_CONFIRMED).itertuples()]
    out["n_confirmed"] = len(confirmed)
    rows = []
    for k, r in enumerate(confirmed.head(MAX_SLICES_SHOWN).itertuples(), start=1):
        inside = confirm_members(features, str(r.slice), getattr(r, "target", None))
        items = [(thumbs[f"{TEST_SPLIT}__{i}"], f"{i} ({e:.2f})")
                 for i, e in zip(inside.index, inside["error"], strict=True)
                 if f"{TEST_SPLIT}__{i}" in thumbs][:EXAMPLES_PER_SLICE]
        if items:
            rows.append((f"#{k}", items))
    if rows:
        names = "; ".join(f"#{k} {n}" for k, n in
                          enumerate(confirmed["slice"].head(len(rows)), start=1))
        path = thumbnail_grid(rows, figdir / "discovered_slice_examples.png")
        out["main_figures"].append(_sized(figure(
            path, run_dir, f"highest-error confirm-half members of the confirmed slices "
            f"({names}); id (error)"), "third"))
    highlight, label = None, ""
    if features is not None and len(confirmed):
        top = str(confirmed["slice"].iloc[0])
        ids = set(confirm_members(features, top).index)
        highlight = features["id"].astype(str).isin(ids).to_numpy()
        label = f"confirm half of {top}" if len(top) <= 40 else "confirm half of the top slice"
    short = ("error: misclassified targets (share)" if task == "classification"
             else "error: 1 − Dice")
    path = embedding_map_plot(features, figdir / "embedding_map.png", short, highlight,
                              label) if features is not None else None
    if path is not None:
        out["main_figures"].append(_sized(figure(
            path, run_dir, "embedding map: the two leading components of the model's "
            "penultimate features, every test sample coloured by its error"
            + ("; red rings: the top confirmed slice's confirm-half members"
               if highlight is not None and highlight.any() else "")), "third"))
    return out


def render_report(run_dir: str | Path) -> Path:
    """Write ``figures/``, ``report.html``, ``report.pdf`` and ``explorer.html`` into
    ``run_dir`` from its stored results (see docs/report.md for the section order)."""
    run_dir = Path(run_dir)
    tables = RunTables(run_dir)
    tables.check()  # a damaged or missing file: one error naming it and how to recover
    run, metrics, task = tables.run, tables.metrics, tables.task
    primary, target = tables.primary, tables.target
    ranking = tables.ranking
    figdir = figures_dir(run_dir)
    outputs = ReportOutputs(run_dir)  # removes only the figures medfail listed in its manifest
    present = set(metrics["metric"])
    metric_list = [primary] + [m for m in SECONDARY[task] if m in present]
    families, main_stress, appendix = [], [], []
    for family in ("corruption", "domain_shift", "prompt"):
        if not (metrics["family"] == family).any():
            continue
        for k, metric in enumerate(metric_list[:2]):
            path = degradation_plot(metrics, metric, target,
                                    figdir / f"degradation_{family}_{metric}.png", family=family)
            fig = _sized(figure(path, run_dir, f"{metric} vs severity, {family}"), "third")
            (main_stress if k == 0 else appendix).append(fig)
        if family == "prompt":
            path = prompt_sensitivity_plot(metrics, primary, target,
                                           figdir / "prompt_sensitivity.png")
            main_stress.append(_sized(figure(path, run_dir, "prompt sensitivity curves"),
                                      "third"))
        families.append({"title": FAMILY_TITLES[family],
                         "table": _family_table(metrics, family, metric_list, target,
                                                run.get("metric_units"))})
    if (metrics["slice"] != ALL).any():
        for k, metric in enumerate(metric_list[:2]):
            if ((metrics["metric"] == metric) & (metrics["slice"] != ALL)).any():
                path = slice_forest_plot(metrics, metric, target, figdir / f"slices_{metric}.png")
                fig = _sized(figure(path, run_dir, _slice_caption(
                    metrics, metric, target, "clean", f"{metric} per slice (clean)")), "half")
                (main_stress if k == 0 else appendix).append(fig)
    top = tables.breaking
    worst_cond = str(top["name"].iloc[0]) if len(top) else None
    if worst_cond and ((metrics["condition"] == worst_cond) & (metrics["slice"] != ALL)).any():
        path = slice_forest_plot(metrics, primary, target, figdir / "slices_worst.png",
                                 condition=worst_cond)
        main_stress.append(_sized(figure(path, run_dir, _slice_caption(
            metrics, primary, target, worst_cond, f"{primary} per slice under {worst_cond}, "
            "the top breaking condition")), "half"))
    calibration = _calibration_section(run_dir, run, worst_cond) if task == "classification" \
        else _segmentation_calibration_section(run_dir, run, worst_cond, target)
    main_cal = [_sized(f, "third") for f in (calibration or {}).get("figures", [])]
    checklist = build_checklist(tables)
    cases = _case_studies(tables, checklist, figdir, run_dir)
    discovery = _discovery_section(tables, run_dir, figdir)
    numbers = _figures_in_order([main_stress, discovery["main_figures"], main_cal,
                                 [c["figure"] for c in cases], discovery["label_figures"],
                                 appendix])
    shift = metrics[(metrics["condition"] == "shift_data") & (metrics["target"] == target)
                    & (metrics["slice"] == ALL)]
    mitigations = _mitigation_rows(run_dir)
    log = run["model"].get("training_log") or {}
    env = Environment(loader=PackageLoader("medfail.report", "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(
        task=task, model_name=run["model"].get("name", ""), data_name=run["data"].get("name", ""),
        n_samples=run["data"]["n_samples"], seed=run["seed"], version=run["medfail_version"],
        n_conditions=len(run["conditions"]), summary=breaking_sentence(ranking),
        problem=_problem(run, task, primary, target, metrics),
        taxonomy=_taxonomy_rows(build_taxonomy(tables), numbers),
        ranking=_ranking_rows(ranking, 8), ranking_full=_ranking_rows(ranking, 30),
        primary=primary, target=target, families=families, main_stress_figures=main_stress,
        main_calibration_figures=main_cal, appendix_figures=appendix, calibration=calibration,
        mitigations=[r for r in mitigations if r["slice"] == "all"][:10],
        mitigation_notes=sorted({f"{r['mitigation']}: {r['note']}" for r in mitigations}),
        cases=cases, checklist=_checklist_view(checklist), discovery=discovery,
        n_bootstrap=run["config"]["n_bootstrap"],
        shift=[{"metric": metric_label(r.metric, run.get("metric_units")),
                "value": fmt(r.value), "delta": fmt_delta(r.delta_vs_clean),
                "ci": fmt_ci(r.delta_ci_low, r.delta_ci_high, r.delta_vs_clean), "n": r.n,
                "cls": "drop" if harmful(r.metric, r.delta_ci_low, r.delta_ci_high) else ""}
               for r in shift.itertuples()],
        shift_name=(run["data"].get("shift") or {}).get("name", ""),
        shift_notes=_macro_notes(metrics, list(dict.fromkeys(shift["metric"])), ["shift_data"])
        if target == MACRO else [],
        ci_note=_ci_footnote(metrics, target, mitigations),
        modality=run.get("modality") or "unknown", distance_unit=_distance_text(run),
        command=shlex.join(run["command"]), stages=run["wall_clock_s"]["stages"],
        per_condition=run["wall_clock_s"]["per_condition"], cached=run.get("cached_conditions"),
        epochs=[e for e in log.get("epochs") or [] if isinstance(e, dict)],
        train_seconds=log.get("wall_clock_s") or 0.0, packages=run["packages"],
        hardware=run["hardware"], data_hash=run["data"].get("content_hash", ""),
        model_hash=run["model"].get("sha256", "n/a"), explorer=EXPLORER_HTML)
    out = run_file(run_dir, REPORT_HTML)
    out.write_text(html, encoding="utf-8")
    render_pdf(out, run_file(run_dir, REPORT_PDF))
    render_explorer(run_dir)
    outputs.record()
    return out
