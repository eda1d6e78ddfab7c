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

from medfail.report.figures import degradation_plot

PRIMARY_METRIC = {"classification": "auroc", "segmentation": "dice", "promptable": "dice"}


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(lo: float, hi: float) -> str:
    return "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.3f}, {hi:.3f}]"


def _report_target(metrics: pd.DataFrame) -> str:
    targets = list(dict.fromkeys(metrics["target"]))
    return "macro" if "macro" in targets else targets[0]


def summary_sentence(metrics: pd.DataFrame, task: str) -> str:
    """One sentence naming the conditions that break the model most (significant drops)."""
    metric = PRIMARY_METRIC[task]
    target = _report_target(metrics)
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    clean_v = float(clean["value"].iloc[0]) if len(clean) else float("nan")
    drops = m[(m["severity"] > 0) & (m["delta_ci_high"] < 0)].sort_values("delta_vs_clean")
    head = f"On clean images {metric} ({target}) is {_fmt(clean_v)}."
    if drops.empty:
        return head + " No stress condition lowers it significantly (paired 95% CI)."
    parts = [f"{r.condition} ({_fmt(r.value)}, Δ {r.delta_vs_clean:+.3f})"
             for r in drops.head(3).itertuples()]
    return (head + f" It drops most under {', '.join(parts)}; {len(drops)} of "
            f"{int((m['severity'] > 0).sum())} stress conditions lower it significantly.")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _tables(metrics: pd.DataFrame) -> list[dict[str, Any]]:
    tables = []
    for (metric, target), grp in metrics[metrics["slice"] == "all"].groupby(
            ["metric", "target"], sort=False):
        rows = []
        for r in grp.itertuples():
            significant = not math.isnan(r.delta_ci_high) and r.delta_ci_high < 0
            rows.append({"condition": r.condition, "severity": r.severity,
                         "value": _fmt(r.value), "ci": _ci(r.ci_low, r.ci_high),
                         "delta": "" if r.condition == "clean" else _fmt(r.delta_vs_clean),
                         "delta_ci": "" if r.condition == "clean" else _ci(
                             r.delta_ci_low, r.delta_ci_high),
                         "cls": "drop" if significant else "", "n": r.n})
        tables.append({"metric": metric, "target": target, "rows": rows})
    return tables


def render_report(run_dir: str | Path) -> Path:
    """Write ``figures/`` and ``report.html`` into ``run_dir`` from its stored results."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    task = run["task"]
    target = _report_target(metrics)
    figures = []
    for metric in dict.fromkeys(metrics["metric"]):
        path = degradation_plot(metrics, metric, target,
                                run_dir / "figures" / f"degradation_{metric}.png")
        figures.append({"src": _data_uri(path), "file": f"figures/{path.name}",
                        "alt": f"{metric} ({target}) vs severity per stress test"})
    env = Environment(loader=PackageLoader("medfail.report", "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(
        task=task, model_name=run["model"].get("name", ""), data_name=run["data"].get("name", ""),
        n_samples=run["data"]["n_samples"], seed=run["seed"], version=run["medfail_version"],
        n_conditions=len(run["conditions"]), summary=summary_sentence(metrics, task),
        figures=figures, tables=_tables(metrics), n_bootstrap=run["config"]["n_bootstrap"],
        command=shlex.join(run["command"]), stages=run["wall_clock_s"]["stages"],
        packages=run["packages"], hardware=run["hardware"])
    out = run_dir / "report.html"
    out.write_text(html, encoding="utf-8")
    return out
