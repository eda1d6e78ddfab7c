"""``compare.html``: two runs side by side (self-contained, opens offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from medfail.analysis.aggregate import beneficial, harmful
from medfail.analysis.compare import compare_runs
from medfail.analysis.ranking import PRIMARY_METRIC
from medfail.report.figures import compare_plot
from medfail.report.formatting import figure, fmt, fmt_ci
from medfail.rundir import RUN_JSON, enclosing_manifest, figures_dir
from medfail.rundir import table as run_file


def render_compare(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> Path:
    """Write ``compare.parquet``, a Δ figure and ``compare.html`` into ``out_dir``; inside a run
    directory (the CLI's default ``RUN_B/compare``) they are listed in its manifest first."""
    run_a, run_b, out_dir = Path(run_a), Path(run_b), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = enclosing_manifest(out_dir)
    if manifest is not None:
        manifest.claim(out_dir / "compare.parquet", out_dir / "compare.html",
                       figures_dir(out_dir) / "compare_delta.png")
    table = compare_runs(run_a, run_b)
    table.to_parquet(out_dir / "compare.parquet", index=False)
    task = json.loads(run_file(run_a, RUN_JSON).read_text())["task"]
    metric = PRIMARY_METRIC[task]
    targets = list(dict.fromkeys(table.loc[table["metric"] == metric, "target"]))
    target = "macro" if "macro" in targets else (targets[0] if targets else "")
    figs = []
    sel = table[(table["metric"] == metric) & (table["target"] == target)]
    if len(sel):
        path = compare_plot(sel, metric, target, figures_dir(out_dir) / "compare_delta.png")
        figs.append(figure(path, out_dir, f"Δ {metric} (B − A) per condition"))
    rows = []
    for r in table.itertuples():
        better = beneficial(r.metric, r.ci_low, r.ci_high)
        worse = harmful(r.metric, r.ci_low, r.ci_high)
        rows.append({"condition": r.condition, "target": r.target, "metric": r.metric,
                     "a": fmt(r.value_a), "b": fmt(r.value_b),
                     "delta": "n/a" if math.isnan(r.delta) else f"{r.delta:+.3f}",
                     "ci": fmt_ci(r.ci_low, r.ci_high) if r.paired else "unpaired",
                     "cls": "gain" if r.paired and better else (
                         "drop" if r.paired and worse else "")})
    env = Environment(loader=PackageLoader("medfail.report", "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("compare.html").render(
        name_a=run_a.name, name_b=run_b.name, task=task, figures=figs, rows=rows,
        n_paired=int(table["paired"].sum()), n_rows=len(table))
    out = out_dir / "compare.html"
    out.write_text(html, encoding="utf-8")
    return out



