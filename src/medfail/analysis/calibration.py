"""Calibration and selective prediction of classifiers, per condition, from stored predictions.

``calibration.parquet`` columns: ``condition, test, family, severity, target, method, metric,
value, n``.

Methods (confidence signals):

* ``max_prob`` - the model's probabilities as they are; confidence ``max(p, 1 - p)`` per target
  (multi-label) or the top-class probability (multi-class);
* ``temperature`` - probabilities after temperature scaling fitted on the calibration split only
  (one temperature per target for multi-label, one for multi-class); absent without a split;
* ``entropy`` - confidence ``-H(p)``; a ranking only (its calibration metrics are ``max_prob``'s);
* ``spread`` - for the TTA and MC-dropout conditions: confidence = minus the standard deviation of
  the target's probability across passes (a ranking that CAN differ from ``max_prob``'s).

Metrics: ``ece`` (15 equal-width bins), ``adaptive_ece`` (15 equal-mass bins), ``brier``, ``nll``
of P(target) (multi-label) or of the top label / full distribution (multi-class); selective
prediction with residual = 1 for a wrong decision at the run's threshold: ``aurc``, ``eaurc``,
``augrc``, ``risk_at_80`` (error rate of the 80 % most confident cases), ``coverage_at_risk_5``
(the largest share of cases kept with an error rate ≤ 5 %), and ``sens_all`` /
``sens_at_80`` (sensitivity over all positives vs over the positives kept at 80 % coverage), so a
report can say "deferring the 20 % least confident cases raises sensitivity from a to b".
For binary targets temperature scaling and entropy are monotone in ``|logit p|``: they cannot
change the ranking, so their AURC equals ``max_prob``'s (stated, not hidden).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfail.metrics.calibration import (
    adaptive_ece,
    brier_multiclass,
    ece,
    ece_top_label,
    nll,
    nll_multiclass,
)
from medfail.metrics.classification import brier
from medfail.metrics.selective import (
    augrc,
    aurc,
    coverage_at_risk,
    eaurc,
    risk_at_coverage,
    selective_metric,
)
from medfail.uncertainty.temperature import (
    apply_temperature_binary,
    apply_temperature_multiclass,
    entropy_binary,
    fit_temperature_binary,
    fit_temperature_multiclass,
)

COVERAGE = 0.8
TARGET_RISK = 0.05
N_BINS = 15
CAL_COLUMNS = ["condition", "test", "family", "severity", "target", "method", "metric", "value",
               "n"]


def _wide(pred: pd.DataFrame, targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = pred.pivot(index="id", columns="target", values="prob")[targets]
    labels = pred.pivot(index="id", columns="target", values="label")[targets]
    return probs.to_numpy(np.float64), labels.to_numpy(np.float64)


def fit_temperatures(calibration: pd.DataFrame, multi_label: bool) -> dict[str, float]:
    """Temperatures from the calibration split's clean predictions."""
    targets = list(dict.fromkeys(calibration["target"]))
    p, y = _wide(calibration, targets)
    if multi_label:
        return {t: fit_temperature_binary(y[:, k], p[:, k]) for k, t in enumerate(targets)}
    return {"all": fit_temperature_multiclass(np.argmax(y, axis=1), p)}


def _selective(conf: np.ndarray, wrong: np.ndarray, y: np.ndarray,
               decision: np.ndarray) -> dict[str, float]:
    pos = y > 0.5
    detected = (decision > 0.5).astype(np.float64)
    return {
        "aurc": aurc(conf, wrong), "eaurc": eaurc(conf, wrong), "augrc": augrc(conf, wrong),
        "risk_at_80": risk_at_coverage(conf, wrong, COVERAGE),
        "coverage_at_risk_5": coverage_at_risk(conf, wrong, TARGET_RISK),
        "sens_all": float(detected[pos].mean()) if pos.any() else float("nan"),
        "sens_at_80": selective_metric(conf[pos], detected[pos], COVERAGE)
        if pos.any() else float("nan"),
    }


def _binary_rows(y: np.ndarray, p: np.ndarray, threshold: float,
                 temperature: float | None,
                 spread: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    decision = (p >= threshold).astype(np.float64)
    wrong = (decision != y).astype(np.float64)
    out: dict[str, dict[str, float]] = {}
    variants: list[tuple[str, np.ndarray]] = [("max_prob", p)]
    if temperature is not None:
        variants.append(("temperature", apply_temperature_binary(p, temperature)))
    for method, q in variants:
        calib = {"ece": ece(y, q, N_BINS), "adaptive_ece": adaptive_ece(y, q, N_BINS),
                 "brier": brier(y, q), "nll": nll(y, q)}
        out[method] = {**calib, **_selective(np.maximum(q, 1 - q), wrong, y, decision)}
    out["entropy"] = _selective(-entropy_binary(p), wrong, y, decision)
    if spread is not None and np.isfinite(spread).all():
        out["spread"] = _selective(-spread, wrong, y, decision)
    return out


def _multiclass_rows(y: np.ndarray, p: np.ndarray,
                     temperature: float | None) -> dict[str, dict[str, float]]:
    labels = np.argmax(y, axis=1)
    out: dict[str, dict[str, float]] = {}
    variants: list[tuple[str, np.ndarray]] = [("max_prob", p)]
    if temperature is not None:
        variants.append(("temperature", apply_temperature_multiclass(p, temperature)))
    for method, q in variants:
        pred = np.argmax(q, axis=1)
        wrong = (pred != labels).astype(np.float64)
        out[method] = {"ece": ece_top_label(labels, q, N_BINS),
                       "brier": brier_multiclass(labels, q), "nll": nll_multiclass(labels, q),
                       "aurc": aurc(q.max(axis=1), wrong), "eaurc": eaurc(q.max(axis=1), wrong),
                       "augrc": augrc(q.max(axis=1), wrong),
                       "risk_at_80": risk_at_coverage(q.max(axis=1), wrong, COVERAGE)}
    ent = -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1)
    wrong = (np.argmax(p, axis=1) != labels).astype(np.float64)
    out["entropy"] = {"aurc": aurc(-ent, wrong), "eaurc": eaurc(-ent, wrong),
                      "augrc": augrc(-ent, wrong)}
    return out


def calibration_table(predictions: pd.DataFrame, multi_label: bool,
                      thresholds: dict[str, float] | float,
                      temperatures: dict[str, float] | None) -> pd.DataFrame:
    """Calibration and selective metrics per condition × target (and macro) × method."""
    targets = list(dict.fromkeys(predictions["target"]))
    if not isinstance(thresholds, dict):
        thresholds = dict.fromkeys(targets, float(thresholds))
    rows: list[dict[str, object]] = []
    for cond, grp in predictions.groupby("condition", sort=False):
        meta = {"condition": cond, "test": grp["test"].iloc[0], "family": grp["family"].iloc[0],
                "severity": grp["severity"].iloc[0]}
        p, y = _wide(grp, targets)
        spread = grp.pivot(index="id", columns="target", values="spread")[targets].to_numpy(
            np.float64) if "spread" in grp else None
        if multi_label:
            per_target = {}
            for k, t in enumerate(targets):
                temp = None if temperatures is None else temperatures.get(t)
                per_target[t] = _binary_rows(y[:, k], p[:, k], thresholds[t], temp,
                                             None if spread is None else spread[:, k])
                rows += _rows(meta, t, per_target[t], len(y))
            if len(targets) > 1:
                rows += _rows(meta, "macro", _macro(per_target), len(y))
        else:
            temp = None if temperatures is None else temperatures.get("all")
            rows += _rows(meta, "all", _multiclass_rows(y, p, temp), len(y))
    return pd.DataFrame(rows, columns=CAL_COLUMNS)


def _rows(meta: dict[str, object], target: str, results: dict[str, dict[str, float]],
          n: int) -> list[dict[str, object]]:
    return [{**meta, "target": target, "method": method, "metric": metric,
             "value": float(value), "n": n}
            for method, metrics in results.items() for metric, value in metrics.items()]


def _macro(per_target: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    first = next(iter(per_target.values()))

    def mean(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return {method: {metric: mean(np.array([per_target[t][method][metric] for t in per_target
                                            if method in per_target[t]]))
                     for metric in metrics} for method, metrics in first.items()}
