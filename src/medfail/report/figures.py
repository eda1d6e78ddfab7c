"""Figures for the report, drawn from ``metrics.parquet`` only (never from a model)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def degradation_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """Metric vs severity, one line per stress test, 95 % CI as a band; clean at severity 0."""
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    for test, grp in m[m["severity"] > 0].groupby("test", sort=True):
        grp = pd.concat([clean, grp]).sort_values("severity")
        line, = ax.plot(grp["severity"], grp["value"], marker="o", label=test)
        ax.fill_between(grp["severity"], grp["ci_low"], grp["ci_high"], alpha=0.15,
                        color=line.get_color())
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel(f"{metric} ({target})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{metric} under stress, 95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
