"""Calibration and selective prediction of classifiers, per condition, from stored predictions.

``calibration.parquet`` columns: ``condition, test, family, severity, target, method, metric,
value, n``.

Methods (confidence signals):

* ``max_prob`` - the model's probabilities as they are; cases ranked by the log-odds of the
  decision, ``|z|`` per target (multi-label; z = the stored logit, else ``log p − log1p(−p)``),
  or ``s_c − logsumexp_{k≠c} s_k`` for the predicted class c (multi-class; s = logits, else
  ``log p``): the order of ``max(p, 1 − p)`` / the top-class probability, without the ties that
  rounding p to float creates (:mod:`medfail.uncertainty.temperature`);
* ``temperature`` - probabilities after temperature scaling fitted on the calibration split only
  (one temperature per target for multi-label, one for multi-class); absent without a split.
  Decisions are those of ``max_prob``; the ranking is that of ``|z| / T``, i.e. exactly
  ``max_prob``'s for binary targets (and two classes), so its AURC equals ``max_prob``'s
  exactly, whatever T (also on a bound of the search, where ``p_T`` rounds to 0 or 1);
* ``entropy`` - confidence ``-H(p)``; a ranking only (its calibration metrics are ``max_prob``'s).
  For binary targets ``-H`` is decreasing in ``|z|``, so cases are ranked by ``|z|``;
  multi-class: ``-H`` from float64 log-probabilities;
* ``spread`` - for the TTA and MC-dropout conditions: confidence = minus the standard deviation of
  the target's probability across passes (a ranking that CAN differ from ``max_prob``'s).

Metrics: ``ece`` (15 equal-width bins), ``adaptive_ece`` (15 equal-mass bins), ``brier``, ``nll``
of P(target) (multi-label) or of the top label / full distribution (multi-class); selective
prediction with residual = 1 for a wrong decision at the run's threshold: ``aurc``, ``eaurc``,
``augrc``, ``risk_at_80`` (error rate of the 80 % most confident cases), ``coverage_at_risk_5``
(the largest share of cases kept with an error rate ≤ 5 %), and ``sens_all`` /
``sens_at_80``. The deferral never sees a label: ``sens_at_80`` keeps the 80 % most confident of
ALL cases (``ceil(0.8 N)`` plus ties, as ``risk_at_80``) and is the share of the positives among
them that are detected (NaN when none is kept), so a report can say "deferring the 20 % least
confident cases changes sensitivity from a to b".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from medfail import rundir
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
    risk_coverage_curve,
    selective_metric,
)
from medfail.uncertainty.temperature import (
    binary_confidence,
    binary_scores,
    class_log_odds,
    finite_scores,
    fit_temperature_binary,
    fit_temperature_multiclass,
    multiclass_scores,
    scale_binary,
    scale_multiclass,
)

#: The share of cases kept by every "defer the least confident" number of a run: ``risk_at_80``,
#: ``sens_at_80``, ``dice_at_80``, ``acceptable_at_80``, mitigation ``selective_80`` (its
#: ``coverage``), the checklist's deferral threshold and the report's text and figures. The
#: metric names carry it (``_at_80``): change them with it.
COVERAGE = 0.8
#: The share deferred, ``1 − COVERAGE`` written exactly (``1 - 0.8`` is 0.19999999999999996).
DEFERRED = round(1.0 - COVERAGE, 12)
TARGET_RISK = 0.05
N_BINS = 15
CAL_COLUMNS = ["condition", "test", "family", "severity", "target", "method", "metric", "value",
               "n"]


def _wide(pred: pd.DataFrame, targets: list[str]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(probabilities, labels, logits or None) as (N, targets) arrays; logits are None unless
    the table has a ``logit`` column that is finite everywhere."""
    def pivot(col: str) -> np.ndarray:
        return pred.pivot(index="id", columns="target", values=col)[targets].to_numpy(np.float64)

    logits = pivot("logit") if "logit" in pred else None
    if logits is not None and not np.isfinite(logits).all():
        logits = None
    return pivot("prob"), pivot("label"), logits


def fit_temperatures(calibration: pd.DataFrame, multi_label: bool) -> dict[str, float]:
    """Temperatures from the calibration split's clean predictions (its stored logits when the
    model gave them, else the log-odds / log-probabilities of its probabilities)."""
    targets = list(dict.fromkeys(calibration["target"]))
    p, y, z = _wide(calibration, targets)
    if multi_label:
        return {t: fit_temperature_binary(y[:, k], p[:, k], None if z is None else z[:, k])
                for k, t in enumerate(targets)}
    return {"all": fit_temperature_multiclass(np.argmax(y, axis=1), p, z)}


def selective_sensitivity(conf: np.ndarray, y: np.ndarray, decision: np.ndarray,
                          coverage: float = COVERAGE) -> float:
    """Sensitivity among the positives kept when the ``coverage`` share of most confident cases
    of ALL cases (positives and negatives alike; the label is not used to defer) is kept."""
    pos = np.asarray(y) > 0.5
    hit = np.where(pos, (np.asarray(decision) > 0.5).astype(np.float64), np.nan)
    return selective_metric(conf, hit, coverage) if pos.any() else float("nan")


def binary_decisions(y: np.ndarray, p: np.ndarray, threshold: float,
                     logits: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One target's ``(decision, wrong, confidence)``: decision = ``p >= threshold`` (0/1),
    wrong = decision differs from the 0/1 label, confidence = ``|z|`` (the log-odds of the
    decision, z = the logits when given and all finite, else ``log p − log1p(−p)``)."""
    p = np.asarray(p, np.float64)
    decision = (p >= threshold).astype(np.float64)
    wrong = (decision != np.asarray(y, np.float64)).astype(np.float64)
    return decision, wrong, binary_confidence(binary_scores(p, logits))


def multiclass_decisions(y: np.ndarray, p: np.ndarray, logits: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, decision, wrong, confidence)`` of (N, K) one-hot labels and probabilities:
    the argmax class of each, wrong = they differ, confidence = the log-odds of the decided
    class, ``s_c − logsumexp_{k≠c} s_k`` (s = the logits when all finite, else ``log p``)."""
    labels = np.argmax(y, axis=1)
    decision = np.argmax(p, axis=1)
    wrong = (decision != labels).astype(np.float64)
    return labels, decision, wrong, class_log_odds(multiclass_scores(p, logits), decision)


@dataclass(frozen=True)
class PooledDecisions:
    """Decisions of one condition pooled over targets (the report's reliability and
    risk-coverage figures), each case scored as in ``calibration.parquet``.

    ``outcome`` is what ``probabilities`` predict: the label (multi-label, every target's cases
    stacked) or whether the top class is right (multi-class, the top-class probability).
    ``probabilities`` per method (``max_prob``; ``temperature`` when fitted), ``wrong`` the
    0/1 residual of the decision and ``confidence`` its log-odds (the ranking)."""

    outcome: np.ndarray
    probabilities: dict[str, np.ndarray]
    wrong: np.ndarray
    confidence: np.ndarray


def pooled_decisions(predictions: pd.DataFrame, multi_label: bool,
                     thresholds: dict[str, float] | float,
                     temperatures: dict[str, float] | None) -> PooledDecisions:
    """:class:`PooledDecisions` of one condition's predictions (multi-label: targets stacked
    in table order, each with its own threshold and temperature; multi-class: one row per
    case)."""
    targets = list(dict.fromkeys(predictions["target"]))
    temps = temperatures or {}
    p, y, z = _wide(predictions, targets)
    if not multi_label:
        _, _, wrong, conf = multiclass_decisions(y, p, z)
        probs = {"max_prob": p.max(axis=1)}
        if "all" in temps:
            probs["temperature"] = scale_multiclass(multiclass_scores(p, z),
                                                    temps["all"]).max(axis=1)
        return PooledDecisions(1.0 - wrong, probs, wrong, conf)
    thresholds = rundir.per_target_thresholds(thresholds, targets)
    ys, ps, wrongs, confs, scaled = [], [], [], [], []
    for k, t in enumerate(targets):
        zk = None if z is None else z[:, k]
        _, wrong, conf = binary_decisions(y[:, k], p[:, k], thresholds[t], zk)
        ys.append(y[:, k])
        ps.append(p[:, k])
        wrongs.append(wrong)
        confs.append(conf)
        if t in temps:
            scaled.append(scale_binary(binary_scores(p[:, k], zk), temps[t]))
    probs = {"max_prob": np.concatenate(ps)}
    if scaled:
        probs["temperature"] = np.concatenate(scaled)
    return PooledDecisions(np.concatenate(ys), probs, np.concatenate(wrongs),
                           np.concatenate(confs))


def decision_risk_coverage(predictions: pd.DataFrame, multi_label: bool,
                           thresholds: dict[str, float] | float,
                           temperatures: dict[str, float] | None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, selective risk)`` of the wrong decisions pooled over targets, cases kept
    by confidence (:func:`pooled_decisions`, :func:`medfail.metrics.selective.
    risk_coverage_curve`: one point per distinct confidence, ties kept together)."""
    d = pooled_decisions(predictions, multi_label, thresholds, temperatures)
    coverage, risk, _ = risk_coverage_curve(d.confidence, d.wrong)
    return coverage, risk


def _selective(conf: np.ndarray, wrong: np.ndarray, y: np.ndarray,
               decision: np.ndarray) -> dict[str, float]:
    pos = y > 0.5
    detected = (decision > 0.5).astype(np.float64)
    return {
        "aurc": aurc(conf, wrong), "eaurc": eaurc(conf, wrong), "augrc": augrc(conf, wrong),
        "risk_at_80": risk_at_coverage(conf, wrong, COVERAGE),
        "coverage_at_risk_5": coverage_at_risk(conf, wrong, TARGET_RISK),
        "sens_all": float(detected[pos].mean()) if pos.any() else float("nan"),
        "sens_at_80": selective_sensitivity(conf, y, decision, COVERAGE),
    }


def _binary_rows(y: np.ndarray, p: np.ndarray, threshold: float,
                 temperature: float | None, spread: np.ndarray | None = None,
                 logits: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    # |z| ranks like max(p, 1 - p), -H(p) and, for every T > 0, |z| / T: one ranking for all
    decision, wrong, conf = binary_decisions(y, p, threshold, logits)
    z = binary_scores(p, logits)
    selective = _selective(conf, wrong, y, decision)
    out: dict[str, dict[str, float]] = {}
    variants: list[tuple[str, np.ndarray]] = [("max_prob", p)]
    if temperature is not None:
        variants.append(("temperature", scale_binary(z, temperature)))
    for method, q in variants:
        calib = {"ece": ece(y, q, N_BINS), "adaptive_ece": adaptive_ece(y, q, N_BINS),
                 "brier": brier(y, q), "nll": nll(y, q)}
        out[method] = {**calib, **selective}
    out["entropy"] = dict(selective)
    if spread is not None and np.isfinite(spread).all():
        out["spread"] = _selective(-spread, wrong, y, decision)
    return out


def _ranking(conf: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    return {"aurc": aurc(conf, wrong), "eaurc": eaurc(conf, wrong), "augrc": augrc(conf, wrong),
            "risk_at_80": risk_at_coverage(conf, wrong, COVERAGE)}


def _multiclass_rows(y: np.ndarray, p: np.ndarray, temperature: float | None,
                     logits: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    # the decision is max_prob's, whatever the method
    labels, pred, wrong, conf = multiclass_decisions(y, p, logits)
    s = multiclass_scores(p, logits)
    out: dict[str, dict[str, float]] = {
        "max_prob": {"ece": ece_top_label(labels, p, N_BINS),
                     "brier": brier_multiclass(labels, p), "nll": nll_multiclass(labels, p),
                     **_ranking(conf, wrong)}}
    if temperature is not None:
        q = scale_multiclass(s, temperature)
        # two classes: log-odds / T, the order of the log-odds; more: it can re-rank cases
        conf_t = conf if p.shape[1] == 2 else class_log_odds(
            finite_scores(s) / float(temperature), pred)
        out["temperature"] = {"ece": ece_top_label(labels, q, N_BINS),
                              "brier": brier_multiclass(labels, q),
                              "nll": nll_multiclass(labels, q), **_ranking(conf_t, wrong)}
    logp = log_softmax(s, axis=1)
    fin = np.isfinite(logp)
    ent = -np.sum(np.exp(logp) * np.where(fin, logp, 0.0), axis=1)  # 0 log 0 = 0
    out["entropy"] = {k: v for k, v in _ranking(-ent, wrong).items() if k != "risk_at_80"}
    return out


def calibration_table(predictions: pd.DataFrame, multi_label: bool,
                      thresholds: dict[str, float] | float,
                      temperatures: dict[str, float] | None) -> pd.DataFrame:
    """Calibration and selective metrics per condition × target (and macro) × method."""
    targets = list(dict.fromkeys(predictions["target"]))
    thresholds = rundir.per_target_thresholds(thresholds, targets)
    rows: list[dict[str, object]] = []
    for cond, grp in predictions.groupby("condition", sort=False):
        meta = {"condition": cond, "test": grp["test"].iloc[0], "family": grp["family"].iloc[0],
                "severity": grp["severity"].iloc[0]}
        p, y, z = _wide(grp, targets)
        spread = grp.pivot(index="id", columns="target", values="spread")[targets].to_numpy(
            np.float64) if "spread" in grp else None
        if multi_label:
            per_target = {}
            for k, t in enumerate(targets):
                temp = None if temperatures is None else temperatures.get(t)
                per_target[t] = _binary_rows(y[:, k], p[:, k], thresholds[t], temp,
                                             None if spread is None else spread[:, k],
                                             None if z is None else z[:, k])
                rows += _rows(meta, t, per_target[t], len(y))
            if len(targets) > 1:
                rows += _rows(meta, "macro", _macro(per_target), len(y))
        else:
            temp = None if temperatures is None else temperatures.get("all")
            rows += _rows(meta, "all", _multiclass_rows(y, p, temp, z), len(y))
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
