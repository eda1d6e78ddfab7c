"""Compare two runs (two models, or two versions of one) condition by condition.

For every ``condition, target, metric`` present in both ``metrics.parquet`` files (slice
``all``): ``value_a``, ``value_b``, ``delta = b - a`` and a 95 % bootstrap interval of the delta.
The interval is **paired** when both runs scored the same samples (same ids): each resample
draws the same images for both models. Per-image metrics (segmentation) are resampled from
``per_sample.parquet``; AUROC and AUPRC (classification) from the stored predictions.
Other metrics, or runs on different samples, get no interval (``paired = False``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import LESION_COUNTS, MACRO
from medfail.metrics.bootstrap import (
    auprc_bootstrap,
    auroc_bootstrap,
    bootstrap_indices,
    percentile_ci,
    resampled_mean,
)
from medfail.seeding import derive_seed

COMPARE_COLUMNS = ["condition", "target", "metric", "value_a", "value_b", "delta", "ci_low",
                   "ci_high", "paired", "n"]
SET_LEVEL = {"auroc": auroc_bootstrap, "auprc": auprc_bootstrap}


def _load(run: Path) -> tuple[dict, pd.DataFrame]:
    info = json.loads(rundir.table(run, rundir.RUN_JSON).read_text())
    metrics = pd.read_parquet(rundir.table(run, rundir.METRICS))
    return info, metrics[metrics["slice"] == "all"]


def _paired_per_image(ps_a: pd.DataFrame, ps_b: pd.DataFrame, cond: str, target: str,
                      metric: str, n_boot: int, seed: int) -> tuple[float, float, int] | None:
    a = ps_a[(ps_a["condition"] == cond) & (ps_a["target"] == target)
             & (ps_a["metric"] == metric)].set_index("id")["value"]
    b = ps_b[(ps_b["condition"] == cond) & (ps_b["target"] == target)
             & (ps_b["metric"] == metric)].set_index("id")["value"]
    ids = sorted(set(a.index) & set(b.index))
    if len(ids) < 2 or len(ids) != len(a) or len(ids) != len(b):
        return None
    idx = bootstrap_indices(len(ids), n_boot, derive_seed(seed, "compare"))
    draws = resampled_mean(b.reindex(ids).to_numpy(float), idx) - resampled_mean(
        a.reindex(ids).to_numpy(float), idx)
    lo, hi = percentile_ci(draws)
    return lo, hi, len(ids)


def _paired_set_level(run_a: Path, run_b: Path, cond: str, target: str, metric: str,
                      n_boot: int, seed: int) -> tuple[float, float, int] | None:
    pa, pb = (rundir.condition_path(r, cond, "classification") for r in (run_a, run_b))
    if not (pa.exists() and pb.exists()) or target == MACRO:
        return None
    a = pd.read_parquet(pa)
    b = pd.read_parquet(pb)
    a, b = a[a["target"] == target].set_index("id"), b[b["target"] == target].set_index("id")
    if set(a.index) != set(b.index) or len(a) < 2:
        return None
    ids = sorted(a.index)
    y = a.loc[ids, "label"].to_numpy(int)
    if not np.array_equal(y, b.loc[ids, "label"].to_numpy(int)):
        return None
    idx = bootstrap_indices(len(ids), n_boot, derive_seed(seed, "compare"))
    fn = SET_LEVEL[metric]
    draws = fn(y, b.loc[ids, "prob"].to_numpy(float), idx) - fn(
        y, a.loc[ids, "prob"].to_numpy(float), idx)
    lo, hi = percentile_ci(draws)
    return lo, hi, len(ids)


def compare_runs(run_a: str | Path, run_b: str | Path, n_bootstrap: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """The comparison table of two run directories (see the module docstring)."""
    run_a, run_b = Path(run_a), Path(run_b)
    info_a, ma = _load(run_a)
    info_b, mb = _load(run_b)
    if info_a["task"] != info_b["task"]:
        raise ValueError(f"cannot compare a {info_a['task']} run with a {info_b['task']} run")
    keys = ["condition", "target", "metric"]
    cols = [*keys, "value"]
    both = ma[cols].merge(mb[cols], on=keys, suffixes=("_a", "_b"))
    per_image = info_a["task"] != "classification"
    ps_a = pd.read_parquet(rundir.table(run_a, rundir.PER_SAMPLE)) if per_image else None
    ps_b = pd.read_parquet(rundir.table(run_b, rundir.PER_SAMPLE)) if per_image else None
    rows = []
    for r in both.itertuples():
        ci = None
        if per_image and r.metric not in LESION_COUNTS and not r.metric.startswith("lesion_"):
            ci = _paired_per_image(ps_a, ps_b, r.condition, r.target, r.metric, n_bootstrap,
                                   seed)
        elif not per_image and r.metric in SET_LEVEL:
            ci = _paired_set_level(run_a, run_b, r.condition, r.target, r.metric,
                                   n_bootstrap, seed)
        lo, hi, n = ci if ci is not None else (np.nan, np.nan, 0)
        rows.append({"condition": r.condition, "target": r.target, "metric": r.metric,
                     "value_a": r.value_a, "value_b": r.value_b,
                     "delta": r.value_b - r.value_a, "ci_low": lo, "ci_high": hi,
                     "paired": ci is not None, "n": n})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)
