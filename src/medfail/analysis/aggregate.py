"""Aggregate per-sample results into the tidy ``metrics.parquet`` table.

Columns: ``condition, test, family, severity, slice, target, metric, value, sd, ci_low,
ci_high, delta_vs_clean, delta_ci_low, delta_ci_high, n``.

* Segmentation metrics are per-image means (``sd`` = their standard deviation, ddof = 1);
  NaN per-image values are ignored and ``n`` counts the finite ones.
* Classification metrics are set-level per target; ``target = "macro"`` is the unweighted mean
  over targets with a defined value (NaN targets, e.g. one class present, are skipped).
* 95 % percentile bootstrap intervals use ONE resample index matrix (``n_bootstrap`` rows,
  seeded by the run seed) for every condition, target and metric, so Δ intervals are paired:
  each resample compares the same samples clean vs perturbed. ``delta_vs_clean`` =
  value(condition) - value(clean).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medfail.engine.seeding import derive_seed
from medfail.metrics.bootstrap import (
    auroc_bootstrap,
    bootstrap_indices,
    bootstrap_statistic,
    percentile_ci,
)
from medfail.metrics.classification import auprc, auroc, sens_at_95spec
from medfail.metrics.classification import f1 as f1_score

COLUMNS: list[str] = [
    "condition", "test", "family", "severity", "slice", "target", "metric", "value", "sd",
    "ci_low", "ci_high", "delta_vs_clean", "delta_ci_low", "delta_ci_high", "n",
]
MACRO = "macro"
ALL = "all"


def _resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicity of each sample in each resample."""
    b = indices.shape[0]
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _f1_bootstrap(y: np.ndarray, decision: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """F1 of every resample, 2TP / (2TP + FP + FN); NaN when TP + FP + FN = 0."""
    tp = counts @ (y * decision)
    fp = counts @ ((1 - y) * decision)
    fn = counts @ (y * (1 - decision))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _summary(value: float, draws: np.ndarray, clean_value: float | None,
             clean_draws: np.ndarray | None) -> dict[str, float]:
    lo, hi = percentile_ci(draws)
    out = {"value": value, "ci_low": lo, "ci_high": hi,
           "delta_vs_clean": np.nan, "delta_ci_low": np.nan, "delta_ci_high": np.nan}
    if clean_value is not None and clean_draws is not None:
        dlo, dhi = percentile_ci(draws - clean_draws)
        out.update(delta_vs_clean=value - clean_value, delta_ci_low=dlo, delta_ci_high=dhi)
    return out


def aggregate_per_image(per_sample: pd.DataFrame, conditions: pd.DataFrame,
                        n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Means of per-image metrics (segmentation) with CIs and paired Δ vs clean."""
    ps = per_sample.copy()
    targets = sorted(ps["target"].unique())
    if len(targets) > 1:
        macro = ps.groupby(["condition", "id", "metric"], as_index=False)["value"].mean()
        macro["target"] = MACRO
        ps = pd.concat([ps, macro], ignore_index=True)
    ids = sorted(ps["id"].unique())
    idx = bootstrap_indices(len(ids), n_bootstrap, derive_seed(seed, "bootstrap"))
    rows = []
    for (target, metric), grp in ps.groupby(["target", "metric"], sort=True):
        wide = grp.pivot(index="id", columns="condition", values="value").reindex(ids)
        clean = wide["clean"].to_numpy() if "clean" in wide else None
        clean_draws = None if clean is None else _nanmean_draws(clean, idx)
        for cond in conditions.itertuples():
            if cond.condition not in wide:
                continue
            v = wide[cond.condition].to_numpy()
            finite = np.isfinite(v)
            stats = _summary(float(np.nanmean(v)) if finite.any() else np.nan,
                             _nanmean_draws(v, idx),
                             None if clean is None else float(np.nanmean(clean)), clean_draws)
            rows.append({"condition": cond.condition, "test": cond.test, "family": cond.family,
                         "severity": cond.severity, "slice": ALL, "target": target,
                         "metric": metric, "sd": float(np.nanstd(v, ddof=1))
                         if finite.sum() > 1 else np.nan, "n": int(finite.sum()), **stats})
    return pd.DataFrame(rows, columns=COLUMNS)


def _nanmean_draws(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    res = values[idx]
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(res), res, np.nan), axis=1) \
            if np.isfinite(res).any() else np.full(len(idx), np.nan)


def _classification_stats(y: np.ndarray, p: np.ndarray, decision: np.ndarray, idx: np.ndarray,
                          counts: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Point value and resample draws of each classification metric for one target."""
    stat: dict[str, tuple[Callable[..., float], tuple[np.ndarray, ...]]] = {
        "auprc": (auprc, (y, p)), "sens_at_95spec": (sens_at_95spec, (y, p)),
    }
    with np.errstate(all="ignore"):
        out = {"auroc": (auroc(y, p), auroc_bootstrap(y, p, idx))}
        for name, (fn, arrays) in stat.items():
            out[name] = (fn(*arrays), bootstrap_statistic(_nan_safe(fn), arrays, idx))
        out["f1"] = (f1_score(y, decision), _f1_bootstrap(y, decision, counts))
    return out


def _nan_safe(fn: Callable[..., float]) -> Callable[..., float]:
    def wrapped(*args: np.ndarray) -> float:
        try:
            return fn(*args)
        except ValueError:
            return float("nan")
    return wrapped


def aggregate_classification(predictions: pd.DataFrame, conditions: pd.DataFrame,
                             multi_label: bool, threshold: float, n_bootstrap: int,
                             seed: int, progress: bool = False) -> pd.DataFrame:
    """Set-level classification metrics per target and macro, with CIs and paired Δ vs clean.

    Decisions for ``f1``: ``prob >= threshold`` per target (multi-label) or the argmax class
    (multi-class, one-vs-rest per target).
    """
    ids = sorted(predictions["id"].unique())
    targets = list(dict.fromkeys(predictions["target"]))
    idx = bootstrap_indices(len(ids), n_bootstrap, derive_seed(seed, "bootstrap"))
    counts = _resample_counts(idx, len(ids))
    per_cond: dict[str, dict[str, dict[str, tuple[float, np.ndarray]]]] = {}
    groups = predictions.groupby("condition", sort=False)
    for cond, grp in tqdm(groups, total=groups.ngroups, desc="bootstrap CIs", unit="condition",
                          leave=False, disable=not progress):
        probs = grp.pivot(index="id", columns="target", values="prob").reindex(ids)[targets]
        labels = grp.pivot(index="id", columns="target", values="label").reindex(ids)[targets]
        p_all, y_all = probs.to_numpy(np.float64), labels.to_numpy(np.float64)
        if multi_label:
            decision_all = (p_all >= threshold).astype(np.float64)
        else:
            decision_all = np.eye(len(targets))[np.argmax(p_all, axis=1)]
        stats = {t: _classification_stats(y_all[:, k], p_all[:, k], decision_all[:, k], idx,
                                          counts) for k, t in enumerate(targets)}
        if len(targets) > 1:
            stats[MACRO] = {}
            for metric in stats[targets[0]]:
                vals = np.array([stats[t][metric][0] for t in targets])
                draws = np.stack([stats[t][metric][1] for t in targets])
                with np.errstate(all="ignore"):
                    stats[MACRO][metric] = (
                        float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan,
                        _nanmean_columns(draws))
        per_cond[str(cond)] = stats
    rows = []
    clean = per_cond.get("clean")
    for cond in conditions.itertuples():
        if cond.condition not in per_cond:
            continue
        for target, metrics in per_cond[cond.condition].items():
            for metric, (value, draws) in metrics.items():
                cv, cd = clean[target][metric] if clean else (None, None)
                rows.append({"condition": cond.condition, "test": cond.test,
                             "family": cond.family, "severity": cond.severity, "slice": ALL,
                             "target": target, "metric": metric, "sd": np.nan, "n": len(ids),
                             **_summary(float(value), draws, cv, cd)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _nanmean_columns(draws: np.ndarray) -> np.ndarray:
    finite = np.isfinite(draws)
    total = np.where(finite, draws, 0.0).sum(axis=0)
    n = finite.sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)
