"""Render ``report.html`` from a run directory alone (works with the model file deleted).

The HTML is self-contained: figures are written to ``figures/`` and embedded as base64 data URIs,
so the file opens offline and can be mailed as one attachment.
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from medfail.analysis.aggregate import ALL, LOWER_IS_BETTER
from medfail.analysis.ranking import (
    PRIMARY_METRIC,
    breaking_sentence,
    breaking_table,
    primary_target,
)
from medfail.report.figures import degradation_plot, prompt_sensitivity_plot, slice_forest_plot

FAMILY_TITLES = {"corruption": "Common corruptions", "domain_shift": "Domain shift",
                 "prompt": "Prompt perturbations"}
SECONDARY = {"classification": ["auprc", "sens_at_95spec", "f1"],
             "segmentation": ["lesion_f1", "nsd", "hd95", "boundary_f1", "jaccard"],
             "promptable": ["lesion_f1", "nsd", "hd95", "boundary_f1", "jaccard"]}


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(lo: float, hi: float) -> str:
    return "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.3f}, {hi:.3f}]"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _figure(path: Path, run_dir: Path, alt: str) -> dict[str, str]:
    return {"src": _data_uri(path), "file": path.relative_to(run_dir).as_posix(), "alt": alt}


def _harmful(metric: str, lo: float, hi: float) -> bool:
    return (hi < 0) if metric not in LOWER_IS_BETTER else (lo > 0)


def _family_table(metrics: pd.DataFrame, family: str, metric_list: list[str],
                  target: str) -> dict[str, Any]:
    """Rows = conditions of one family (plus clean); cells = value and Δ [CI] per metric."""
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
                cells.append({"text": f"{_fmt(r.value)} {_ci(r.ci_low, r.ci_high)}", "cls": ""})
                continue
            cells.append({"text": f"{_fmt(r.value)} (Δ {r.delta_vs_clean:+.3f} "
                                  f"{_ci(r.delta_ci_low, r.delta_ci_high)})",
                          "cls": "drop" if _harmful(metric, r.delta_ci_low, r.delta_ci_high)
                          else ""})
        rows.append({"condition": cond, "cells": cells})
    return {"metrics": metric_list, "rows": rows}


def _ranking_rows(ranking: pd.DataFrame, limit: int = 15) -> list[dict[str, Any]]:
    out = []
    for r in ranking.head(limit).itertuples():
        out.append({"rank": r.rank, "kind": r.kind, "name": r.name, "family": r.family,
                    "reference": _fmt(r.reference), "value": _fmt(r.value),
                    "effect": f"{r.effect:+.3f}", "ci": _ci(r.effect_ci_low, r.effect_ci_high),
                    "cls": "drop" if r.significant else "", "n": r.n,
                    "flag": "few cases" if r.small_slice else ""})
    return out


def render_report(run_dir: str | Path) -> Path:
    """Write ``figures/`` and ``report.html`` into ``run_dir`` from its stored results."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    task = run["task"]
    primary = PRIMARY_METRIC[task]
    target = primary_target(metrics, primary)
    ranking = breaking_table(metrics, task)
    figdir = run_dir / "figures"
    present = set(metrics["metric"])
    metric_list = [primary] + [m for m in SECONDARY[task] if m in present]
    families = []
    for family in ("corruption", "domain_shift", "prompt"):
        if not (metrics["family"] == family).any():
            continue
        figs = []
        for metric in metric_list[:2]:
            path = degradation_plot(metrics, metric, target,
                                    figdir / f"degradation_{family}_{metric}.png", family=family)
            figs.append(_figure(path, run_dir, f"{metric} vs severity, {family}"))
        if family == "prompt":
            path = prompt_sensitivity_plot(metrics, primary, target,
                                           figdir / "prompt_sensitivity.png")
            figs.append(_figure(path, run_dir, "prompt sensitivity curves"))
        families.append({"title": FAMILY_TITLES[family], "figures": figs,
                         "table": _family_table(metrics, family, metric_list, target)})
    slice_figs = []
    if (metrics["slice"] != ALL).any():
        for metric in metric_list[:2]:
            if ((metrics["metric"] == metric) & (metrics["slice"] != ALL)).any():
                path = slice_forest_plot(metrics, metric, target, figdir / f"slices_{metric}.png")
                slice_figs.append(_figure(path, run_dir, f"{metric} per slice (clean)"))
    top = ranking[(ranking["kind"] == "condition") & ranking["significant"]]
    if len(top):
        worst = str(top["name"].iloc[0])
        has = (metrics["condition"] == worst) & (metrics["slice"] != ALL)
        if has.any():
            path = slice_forest_plot(metrics, primary, target, figdir / "slices_worst.png",
                                     condition=worst)
            slice_figs.append(_figure(path, run_dir, f"{primary} per slice under {worst}, "
                                      "the top breaking condition"))
    shift = metrics[(metrics["condition"] == "shift_data") & (metrics["target"] == target)
                    & (metrics["slice"] == ALL)]
    env = Environment(loader=PackageLoader("medfail.report", "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(
        task=task, model_name=run["model"].get("name", ""), data_name=run["data"].get("name", ""),
        n_samples=run["data"]["n_samples"], seed=run["seed"], version=run["medfail_version"],
        n_conditions=len(run["conditions"]), summary=breaking_sentence(ranking),
        ranking=_ranking_rows(ranking), primary=primary, target=target, families=families,
        slice_figures=slice_figs, n_bootstrap=run["config"]["n_bootstrap"],
        shift=[{"metric": r.metric, "value": _fmt(r.value), "delta": f"{r.delta_vs_clean:+.3f}",
                "ci": _ci(r.delta_ci_low, r.delta_ci_high), "n": r.n,
                "cls": "drop" if _harmful(r.metric, r.delta_ci_low, r.delta_ci_high) else ""}
               for r in shift.itertuples()],
        shift_name=(run["data"].get("shift") or {}).get("name", ""),
        modality=run.get("modality") or "unknown", distance_unit=run.get("distance_unit", "px"),
        command=shlex.join(run["command"]), stages=run["wall_clock_s"]["stages"],
        packages=run["packages"], hardware=run["hardware"])
    out = run_dir / "report.html"
    out.write_text(html, encoding="utf-8")
    return out
