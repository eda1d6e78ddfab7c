"""Selective prediction: risk–coverage curve, AURC, E-AURC, AUGRC and operating points.

Inputs are 1-D arrays of equal length: ``confidence`` (higher = more confident; any real
scale, no NaN) and ``residual``, a finite per-sample loss (0/1 error, 1 − Dice, ...). A
sample is *accepted* at threshold t when ``confidence >= t``; the rest are deferred.

CONVENTIONS (FD-Shifts):

* Selective risk at threshold t: ``R(t) = Σ_{c_i >= t} r_i / #{c_i >= t}``; generalized risk
  (Traub et al. 2024): ``G(t) = Σ_{c_i >= t} r_i / N`` (joint probability of being accepted
  and failing, for 0/1 residuals).
* Ties: samples with equal confidence are accepted together, so the curve has one point per
  distinct confidence value.
* Areas are averages over the N coverages k/N (k = 1..N) of the risk when the k most
  confident samples are accepted (Geifman et al.'s AURC). When the k-th sample lies inside a
  tie group, its risk is the expectation over a random order of the tied samples: the
  cumulative residual is interpolated linearly within the group. AURC and AUGRC thus equal
  their mean under random tie-breaking, are unchanged by permuting tied samples, and give a
  constant confidence the score of a random ranking.

Set-level functions return a Python float; no samples -> ``nan``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy

__all__ = [
    "augrc",
    "aurc",
    "coverage_at_risk",
    "eaurc",
    "optimal_aurc",
    "risk_at_coverage",
    "risk_coverage_curve",
    "selective_metric",
]

# Slack on the accepted-sample count ceil(coverage · N), so that e.g. 0.7 · 10 accepts 7.
_COUNT_ATOL = 1e-9

# Selective risks within this slack of max_risk count as meeting it (float rounding).
_RISK_ATOL = 1e-12


def _as_float_1d(name: str, arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{name} must be real numeric, got dtype {a.dtype}")
    return a.astype(np.float64)


def _check_inputs(
    confidence: np.ndarray, other: np.ndarray, other_name: str, allow_nan: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (confidence, other): 1-D, same length, confidence without NaN, other finite
    (or, with allow_nan, NaN allowed)."""
    c = _as_float_1d("confidence", confidence)
    o = _as_float_1d(other_name, other)
    if c.shape != o.shape:
        raise ValueError(
            f"confidence and {other_name} must have the same length, got confidence "
            f"{c.shape} and {other_name} {o.shape}"
        )
    n_nan = int(np.count_nonzero(np.isnan(c)))
    if n_nan:
        raise ValueError(f"confidence contains {n_nan} NaN value(s)")
    if not allow_nan:
        bad = ~np.isfinite(o)
        if bad.any():
            raise ValueError(
                f"{other_name} must be finite, found {int(bad.sum())} NaN/inf value(s)"
            )
    return c, o


def _check_fraction(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return v


def _sorted_groups(c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by confidence descending; return (sorted confidence, sorted residual, last index
    of each tie group in sorted order)."""
    order = np.argsort(-c, kind="mergesort")
    cs, rs = c[order], r[order]
    last = np.r_[np.flatnonzero(cs[1:] != cs[:-1]), cs.size - 1]
    return cs, rs, last


def _expected_cumulative_residual(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """E[Σ residual of the k most confident], k = 1..N, ties accepted in random order.

    Within a tie group of size s spanning counts (k0, k0 + s], with cumulative residual F0
    before and F1 after it: ``E[F_k] = F0 + (k − k0) · (F1 − F0) / s``.
    """
    _, rs, last = _sorted_groups(c, r)
    k_end = last + 1
    k_start = np.r_[0, k_end[:-1]]
    f_end = np.cumsum(rs)[last]
    f_start = np.r_[0.0, f_end[:-1]]
    size = k_end - k_start
    g = np.repeat(np.arange(last.size), size)
    j = np.arange(1, c.size + 1) - k_start[g]
    return f_start[g] + j * (f_end - f_start)[g] / size[g]


def risk_coverage_curve(
    confidence: np.ndarray, residual: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk–coverage curve ``(coverage, risk, thresholds)``, one point per distinct confidence.

    For each distinct confidence t (``thresholds``, descending): ``coverage = #{c_i >= t} / N``
    (ascending, last = 1) and ``risk = Σ_{c_i >= t} r_i / #{c_i >= t}`` (selective risk). Tied
    confidences enter together (FD-Shifts ``selective_risk_stats``, without its extra
    coverage-0 point). Generalized risk is ``risk * coverage``.

    EDGE CASES: no samples -> three empty arrays. All confidences equal -> one point
    ``(1, mean(residual), c)``.

    Raises:
        ValueError: not 1-D, lengths differ, NaN confidence or non-finite residual.

    Example:
        >>> c, r = np.array([0.9, 0.8, 0.8, 0.3]), np.array([0.0, 1.0, 0.0, 1.0])
        >>> cov, risk, thr = risk_coverage_curve(c, r)  # the two 0.8 enter together
        >>> cov.tolist(), risk.tolist(), thr.tolist()
        ([0.25, 0.75, 1.0], [0.0, 0.3333333333333333, 0.5], [0.9, 0.8, 0.3])
    """
    c, r = _check_inputs(confidence, residual, "residual")
    if c.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    cs, rs, last = _sorted_groups(c, r)
    k = last + 1
    return k / c.size, np.cumsum(rs)[last] / k, cs[last]


def aurc(confidence: np.ndarray, residual: np.ndarray) -> float:
    """Area under the risk–coverage curve (lower is better).

    FORMULA: ``AURC = (1/N) Σ_{k=1..N} E[F_k] / k`` where ``F_k`` is the summed residual of the
    k most confident samples, i.e. the mean over coverages k/N of the selective risk
    (Geifman et al. 2019). TIES: inside a tie group E[F_k] interpolates the cumulative residual
    linearly (the mean over random orders of the tied samples), so without ties this is
    exactly the mean selective risk and with ties it is its expectation under random
    tie-breaking. FD-Shifts reports the trapezoid area of the curve (× 1000), which differs
    by O(1/N). Random confidence gives ≈ mean(residual); see ``eaurc`` for the optimum.

    EDGE CASES: no samples -> nan. All residuals 0 -> 0; all 1 -> 1. N = 1 -> the residual.
    All confidences equal -> mean(residual).

    Raises:
        ValueError: as ``risk_coverage_curve``.

    Example:
        >>> r = np.array([0.0, 0.0, 1.0, 1.0])
        >>> round(aurc(np.array([0.9, 0.8, 0.7, 0.3]), r), 4)  # a perfect ranking
        0.2083
        >>> round(aurc(np.array([0.9, 0.8, 0.8, 0.3]), r), 4)  # a tie: the mean of both orders
        0.2708
        >>> round(aurc(np.zeros(4), r), 4)  # constant confidence: a random ranking
        0.5
    """
    c, r = _check_inputs(confidence, residual, "residual")
    if c.size == 0:
        return float("nan")
    f = _expected_cumulative_residual(c, r)
    return float(np.mean(f / np.arange(1, c.size + 1)))


def _aurc_optimal_ranking(r: np.ndarray) -> float:
    """AURC when the confidence ranks residuals ascending (most confident = smallest loss)."""
    f = np.cumsum(np.sort(r))
    return float(np.mean(f / np.arange(1, r.size + 1)))


def eaurc(confidence: np.ndarray, residual: np.ndarray) -> float:
    """Excess AURC: ``aurc − aurc of the optimal ranking`` (>= 0; 0 for a perfect ranking).

    The optimal ranking accepts residuals in ascending order (distinct confidences), giving
    ``(1/N) Σ_k (sum of the k smallest residuals) / k`` -- the lowest selective risk at every
    coverage. For 0/1 residuals with m = e·N errors this is exactly
    ``e − (1 − e)·(H_N − H_{N−m})`` (H = harmonic numbers), which tends to
    ``optimal_aurc(e) = e + (1 − e)·ln(1 − e)`` as N grows. FD-Shifts subtracts the
    asymptotic formula instead, which differs by O(1/N).

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``risk_coverage_curve``.

    Example:
        >>> round(eaurc(np.array([0.9, 0.8, 0.7, 0.3]), np.array([0.0, 0.0, 1.0, 1.0])), 4)
        0.0
        >>> round(eaurc(np.array([0.3, 0.8, 0.7, 0.9]), np.array([0.0, 0.0, 1.0, 1.0])), 4)
        0.4583
    """
    c, r = _check_inputs(confidence, residual, "residual")
    if c.size == 0:
        return float("nan")
    return aurc(c, r) - _aurc_optimal_ranking(r)


def optimal_aurc(error_rate: float) -> float:
    """Closed-form AURC of a perfect ranking for 0/1 residuals, large-N limit:
    ``e + (1 − e)·ln(1 − e)`` (0 at e = 0, 1 at e = 1).

    The selective risk of a perfect ranking is ``max(0, 1 − (1 − e)/c)`` at coverage c;
    integrating over c in [0, 1] gives the formula. Finite N: see ``eaurc``.

    Raises:
        ValueError: error_rate outside [0, 1] or NaN.

    Example:
        >>> round(optimal_aurc(0.1), 4), optimal_aurc(0.0), optimal_aurc(1.0)
        (0.0052, 0.0, 1.0)
    """
    e = float(error_rate)
    if not 0.0 <= e <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
    return float(e + xlogy(1.0 - e, 1.0 - e))


def augrc(confidence: np.ndarray, residual: np.ndarray) -> float:
    """Area under the generalized risk–coverage curve (Traub et al. 2024; lower is better).

    FORMULA: ``AUGRC = (1/N) Σ_{k=1..N} E[F_k] / N``: the mean over coverages k/N of the
    generalized risk (summed residual of the accepted samples divided by N, i.e. the joint
    probability of being accepted and failing), with ties handled as in ``aurc``. For 0/1
    residuals, exactly ``(1 − AUROC_f)·acc·e + e²/2 + e/(2N)`` with e = error rate,
    acc = 1 − e and AUROC_f the AUROC of confidence for separating correct from failed
    samples (ties ½). FD-Shifts' trapezoid AUGRC is this minus ``mean(residual)/(2N)``.

    EDGE CASES: no samples -> nan. All residuals 0 -> 0; all 1 -> (N + 1)/(2N) (→ ½).

    Raises:
        ValueError: as ``risk_coverage_curve``.

    Example:
        >>> round(augrc(np.array([0.9, 0.8, 0.7, 0.3]), np.array([0.0, 0.0, 1.0, 1.0])), 4)
        0.1875
    """
    c, r = _check_inputs(confidence, residual, "residual")
    if c.size == 0:
        return float("nan")
    f = _expected_cumulative_residual(c, r)
    return float(np.mean(f) / c.size)


def _accepted(c: np.ndarray, coverage: float) -> np.ndarray:
    """Mask of the ceil(coverage · N) most confident samples plus any tied with the last."""
    n = c.size
    k = min(n, max(1, math.ceil(coverage * n - _COUNT_ATOL)))
    kth = np.sort(c)[::-1][k - 1]
    return c >= kth


def risk_at_coverage(confidence: np.ndarray, residual: np.ndarray, coverage: float) -> float:
    """Selective risk when the ``coverage`` fraction of most confident samples is accepted.

    Accepts the ``k = ceil(coverage · N)`` most confident samples (1e-9 slack on the count,
    so 0.7 of 10 is 7) and every sample tied with the k-th (``confidence >= t_k``), so the
    realised coverage can exceed ``coverage`` when a tie straddles the cut; returns their mean
    residual. ``coverage = 1`` -> mean(residual).

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``risk_coverage_curve``, or coverage outside (0, 1].

    Example:
        >>> risk_at_coverage(np.array([0.9, 0.8, 0.7, 0.3]), np.array([0.0, 1.0, 0.0, 1.0]), 0.5)
        0.5
    """
    cov = _check_fraction("coverage", coverage)
    c, r = _check_inputs(confidence, residual, "residual")
    if c.size == 0:
        return float("nan")
    return float(np.mean(r[_accepted(c, cov)]))


def coverage_at_risk(confidence: np.ndarray, residual: np.ndarray, max_risk: float) -> float:
    """Largest coverage whose selective risk is <= ``max_risk``; 0.0 when none.

    Searched over the points of ``risk_coverage_curve`` (thresholds at distinct confidences,
    so ties enter together; the selective risk need not be monotone in coverage), with a
    1e-12 slack for rounding.

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``risk_coverage_curve``, or max_risk NaN / infinite.

    Example:
        >>> coverage_at_risk(np.array([0.9, 0.8, 0.7, 0.3]), np.array([0.0, 1.0, 0.0, 1.0]), 0.4)
        0.75
    """
    m = float(max_risk)
    if not np.isfinite(m):
        raise ValueError(f"max_risk must be finite, got {max_risk!r}")
    cov, risk, _ = risk_coverage_curve(confidence, residual)
    if cov.size == 0:
        return float("nan")
    ok = risk <= m + _RISK_ATOL
    return float(cov[ok].max()) if ok.any() else 0.0


def selective_metric(confidence: np.ndarray, values: np.ndarray, coverage: float) -> float:
    """Mean of a per-sample value over the ``coverage`` fraction of most confident samples.

    Same acceptance rule as ``risk_at_coverage``. NaN values are ignored *after* acceptance:
    pass the confidences of ALL cases with a 0/1 detection indicator for positives and NaN for
    negatives to get the sensitivity among the accepted positives (label-free deferral; passing
    only the positives' confidences would defer by label). "Deferring the 20% least confident
    cases raises X from a to b" is ``selective_metric(c, x, 1.0)`` ->
    ``selective_metric(c, x, 0.8)``.

    EDGE CASES: no samples, or every accepted value NaN -> nan.

    Raises:
        ValueError: not 1-D, lengths differ, NaN confidence, or coverage outside (0, 1].

    Example:
        >>> conf = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
        >>> hit = np.array([1.0, np.nan, 1.0, 0.0, np.nan])  # positives 1/0; NaN: negatives
        >>> round(selective_metric(conf, hit, 1.0), 4), selective_metric(conf, hit, 0.6)
        (0.6667, 1.0)
    """
    cov = _check_fraction("coverage", coverage)
    c, v = _check_inputs(confidence, values, "values", allow_nan=True)
    if c.size == 0:
        return float("nan")
    acc = v[_accepted(c, cov)]
    acc = acc[~np.isnan(acc)]
    return float(acc.mean()) if acc.size else float("nan")
