"""Selective-prediction metrics: hand examples with ties, brute force, FD-Shifts-style
reference loop, closed-form optimum, AUROC identity, monotonicity and edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfail.metrics.selective import (
    augrc,
    aurc,
    coverage_at_risk,
    eaurc,
    optimal_aurc,
    risk_at_coverage,
    risk_coverage_curve,
    selective_metric,
)

SEEDS = [0, 1, 2, 3, 4, 5]

# Hand example: groups {0.9: 1, 0} {0.8: 0} {0.5: 1, 0, 0}
CONF = np.array([0.5, 0.9, 0.5, 0.8, 0.9, 0.5])
RES = np.array([1, 1, 0, 0, 0, 0])


def sample(seed: int, n: int | None = None, decimals: int | None = None, binary: bool = True):
    """Confidence informative about the residual; rounding creates ties."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(20, 300))
    error_rate = rng.uniform(0.05, 0.5)
    # 0/1 errors, or a continuous loss such as 1 − Dice
    r = (rng.random(n) < error_rate).astype(float) if binary else rng.beta(0.7, 2.0, n)
    c = -r * rng.uniform(0.0, 2.0) + rng.normal(size=n)
    if decimals is not None:
        c = np.round(c, decimals)
    return c, r


def brute_aurc_no_ties(c, r):
    """Geifman et al.: mean over k of the mean residual of the k most confident."""
    order = sorted(range(len(c)), key=lambda i: -c[i])
    return sum(sum(r[i] for i in order[:k]) / k for k in range(1, len(c) + 1)) / len(c)


def brute_augrc_no_ties(c, r):
    order = sorted(range(len(c)), key=lambda i: -c[i])
    n = len(c)
    return sum(sum(r[i] for i in order[:k]) / n for k in range(1, n + 1)) / n


def average_over_tie_orders(metric, c, r):
    """Exact expectation over every order of the tied samples: break ties by rank offsets."""
    groups = [np.flatnonzero(c == v) for v in np.unique(c)]
    values = []
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        c2 = c.astype(float).copy()
        for g, perm in zip(groups, perms, strict=True):
            c2[list(perm)] = c[g[0]] + np.arange(len(g)) * 1e-6  # later in perm = higher
        values.append(metric(c2, r))
    return float(np.mean(values))


def fdshifts_curve(c, r):
    """Reference loop in the style of FD-Shifts ``selective_risk_stats`` (ascending confidence,
    drop one sample at a time, record a point when the confidence changes)."""
    idx = np.argsort(c, kind="mergesort")
    c, r = c[idx], r[idx]
    n = len(r)
    err = r.sum()
    cov, risk, thr = [1.0], [err / n], [c[0]]
    for i in range(n - 1):
        err -= r[i]
        if c[i] != c[i + 1]:
            cov.append((n - 1 - i) / n)
            risk.append(err / (n - 1 - i))
            thr.append(c[i + 1])
    return np.array(cov[::-1]), np.array(risk[::-1]), np.array(thr[::-1])


def harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


# ---------------------------------------------------------------- hand example with ties


def test_hand_example_with_ties():
    cov, risk, thr = risk_coverage_curve(CONF, RES)
    np.testing.assert_allclose(cov, [2 / 6, 3 / 6, 1.0])
    np.testing.assert_allclose(risk, [1 / 2, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(thr, [0.9, 0.8, 0.5])
    # E[F_k] = 0.5, 1, 1, 4/3, 5/3, 2  (tie groups filled linearly)
    assert aurc(CONF, RES) == pytest.approx((1 / 2 + 1 / 2 + 4 * (1 / 3)) / 6)  # 7/18
    assert augrc(CONF, RES) == pytest.approx((0.5 + 1 + 1 + 4 / 3 + 5 / 3 + 2) / 36)  # 5/24
    # optimal: residuals ascending -> risks 0, 0, 0, 0, 1/5, 2/6
    assert eaurc(CONF, RES) == pytest.approx(7 / 18 - (1 / 5 + 1 / 3) / 6)  # 0.3
    assert risk_at_coverage(CONF, RES, 1 / 6) == pytest.approx(1 / 2)  # the 0.9 tie enters
    assert risk_at_coverage(CONF, RES, 0.5) == pytest.approx(1 / 3)
    assert risk_at_coverage(CONF, RES, 0.51) == pytest.approx(1 / 3)  # all 0.5s enter
    assert risk_at_coverage(CONF, RES, 1.0) == pytest.approx(1 / 3)
    assert coverage_at_risk(CONF, RES, 0.4) == 1.0
    assert coverage_at_risk(CONF, RES, 0.5) == 1.0
    assert coverage_at_risk(CONF, RES, 0.3) == 0.0
    assert coverage_at_risk(CONF, RES, 1 / 3) == 1.0  # within rounding slack


@pytest.mark.parametrize("seed", range(8))
def test_ties_equal_expectation_over_tie_orders(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    c = rng.integers(0, 3, n).astype(float)
    r = rng.integers(0, 2, n).astype(float) if seed % 2 else rng.random(n)
    assert aurc(c, r) == pytest.approx(average_over_tie_orders(brute_aurc_no_ties, c, r))
    assert augrc(c, r) == pytest.approx(average_over_tie_orders(brute_augrc_no_ties, c, r))


def test_permuting_tied_samples_changes_nothing():
    c, r = sample(3, 200, decimals=0)
    perm = np.random.default_rng(0).permutation(len(c))
    for f in (aurc, augrc, eaurc):
        assert f(c[perm], r[perm]) == pytest.approx(f(c, r), abs=1e-14)
    np.testing.assert_allclose(risk_coverage_curve(c[perm], r[perm]), risk_coverage_curve(c, r))


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
def test_matches_brute_force_without_ties(seed, binary):
    c, r = sample(seed, binary=binary)
    assert aurc(c, r) == pytest.approx(brute_aurc_no_ties(c, r), abs=1e-12)
    assert augrc(c, r) == pytest.approx(brute_augrc_no_ties(c, r), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("binary", [True, False])
def test_curve_matches_fdshifts_reference(seed, decimals, binary):
    c, r = sample(seed, decimals=decimals, binary=binary)
    cov, risk, thr = risk_coverage_curve(c, r)
    ref = fdshifts_curve(c, r)
    np.testing.assert_allclose(cov, ref[0], atol=1e-15)
    np.testing.assert_allclose(risk, ref[1], atol=1e-12)
    np.testing.assert_array_equal(thr, ref[2])
    # AUGRC = FD-Shifts trapezoid over (0, 0) + generalized-risk points, + mean(r)/(2N)
    x = np.r_[0.0, cov]
    g = np.r_[0.0, risk * cov]
    trapezoid = float(np.sum(np.diff(x) * (g[1:] + g[:-1]) / 2))
    assert augrc(c, r) == pytest.approx(trapezoid + r.mean() / (2 * len(r)), abs=1e-12)
    if decimals is None:  # no ties: FD-Shifts' trapezoid AURC (with a (0, r_1) point)
        y = np.r_[risk[0], risk]
        trapezoid = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
        offset = (risk[0] - risk[-1]) / (2 * len(r))
        assert aurc(c, r) == pytest.approx(trapezoid - offset, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_augrc_auroc_identity(seed, decimals):
    """0/1 residuals: AUGRC = (1 − AUROC_f)·acc·e + e²/2 + e/(2N), ties counted ½."""
    c, r = sample(seed, decimals=decimals)
    e, n = r.mean(), len(r)
    auroc_f = roc_auc_score(1 - r, c)
    expected = (1 - auroc_f) * (1 - e) * e + e**2 / 2 + e / (2 * n)
    assert augrc(c, r) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- optimum, random ranking


@pytest.mark.parametrize("n, n_err", [(10, 3), (100, 1), (1000, 250), (57, 56)])
def test_perfect_ranking_hits_exact_optimum(n, n_err):
    r = np.r_[np.zeros(n - n_err), np.ones(n_err)]
    c = -r + np.random.default_rng(n).random(n) * 0.5  # every correct above every failure
    e = n_err / n
    exact = e - (1 - e) * (harmonic(n) - harmonic(n - n_err))
    assert aurc(c, r) == pytest.approx(exact, abs=1e-12)
    assert eaurc(c, r) == pytest.approx(0.0, abs=1e-12)
    assert eaurc(-r, r) == pytest.approx(0.0, abs=1e-12)  # two tie groups: still optimal
    assert augrc(c, r) == pytest.approx(n_err * (n_err + 1) / (2 * n * n), abs=1e-12)


@pytest.mark.parametrize("e", [0.05, 0.2, 0.5, 0.9])
def test_perfect_ranking_approaches_closed_form(e):
    n = 100_000
    n_err = round(e * n)
    r = np.r_[np.zeros(n - n_err), np.ones(n_err)]
    c = -r
    assert aurc(c, r) == pytest.approx(optimal_aurc(e), abs=5 / n)
    assert aurc(c, r) >= optimal_aurc(e)  # finite-N optimum lies above the limit


def test_optimal_aurc_values():
    assert optimal_aurc(0.0) == 0.0
    assert optimal_aurc(1.0) == 1.0
    assert optimal_aurc(0.5) == pytest.approx(0.5 + 0.5 * math.log(0.5))
    es = np.linspace(0, 1, 21)
    vals = [optimal_aurc(x) for x in es]
    assert np.all(np.diff(vals) > 0) and all(v <= x for v, x in zip(vals, es, strict=True))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="error_rate"):
            optimal_aurc(bad)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_confidence_gives_error_rate(seed):
    rng = np.random.default_rng(seed)
    r = (rng.random(20_000) < rng.uniform(0.05, 0.4)).astype(float)
    c = rng.random(r.size)
    assert aurc(c, r) == pytest.approx(r.mean(), abs=0.02)
    assert augrc(c, r) == pytest.approx(r.mean() / 2, abs=0.01)
    assert aurc(np.zeros(r.size), r) == pytest.approx(r.mean(), abs=1e-12)  # constant


def test_better_ranking_lower_aurc():
    c, r = sample(0, 2000)
    assert aurc(-r, r) <= aurc(c, r) <= aurc(r, r)
    assert augrc(-r, r) <= augrc(c, r) <= augrc(r, r)
    assert eaurc(c, r) >= 0


# ---------------------------------------------------------------- operating points


@pytest.mark.parametrize("seed", SEEDS)
def test_operating_points_vs_brute_force(seed):
    c, r = sample(seed, decimals=1, binary=False)
    n = len(c)
    for cov in (0.05, 0.2, 0.5, 0.8, 1.0):
        k = math.ceil(cov * n - 1e-9)
        kth = sorted(c, reverse=True)[k - 1]
        accepted = [i for i in range(n) if c[i] >= kth]
        assert risk_at_coverage(c, r, cov) == pytest.approx(np.mean(r[accepted]))
        assert selective_metric(c, 1 - r, cov) == pytest.approx(1 - np.mean(r[accepted]))
    curve_cov, curve_risk, _ = risk_coverage_curve(c, r)
    for m in (0.0, 0.1, 0.2, 0.3, 1.0):
        ok = [cv for cv, rk in zip(curve_cov, curve_risk, strict=True) if rk <= m]
        assert coverage_at_risk(c, r, m) == (max(ok) if ok else 0.0)


def test_monotonicity():
    c, r = sample(1, 500, binary=False)
    caps = np.linspace(0, 1, 41)
    covs = [coverage_at_risk(c, r, m) for m in caps]
    assert np.all(np.diff(covs) >= 0) and covs[-1] == 1.0
    cov, risk, thr = risk_coverage_curve(c, r)
    assert np.all(np.diff(cov) > 0) and np.all(np.diff(thr) < 0)
    assert np.all(np.diff(risk * cov) >= 0)  # generalized risk grows with coverage
    # a perfect ranking's selective risk never decreases with coverage
    c_opt = -r
    risks = [risk_at_coverage(c_opt, r, q) for q in np.linspace(0.01, 1, 50)]
    assert np.all(np.diff(risks) >= -1e-15)


def test_selective_metric_ignores_nan_and_defers():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    hit = np.array([1, np.nan, 1, 1, np.nan, 0, 1, np.nan, 0, 0])  # NaN = negative case
    assert selective_metric(conf, hit, 1.0) == pytest.approx(4 / 7)
    assert selective_metric(conf, hit, 0.8) == pytest.approx(4 / 5)  # defer the 20% least sure
    assert selective_metric(conf, hit, 0.7) == pytest.approx(4 / 5)  # 0.7 · 10 = 7 (slack)
    assert math.isnan(selective_metric(conf, np.full(10, np.nan), 0.5))
    assert selective_metric(conf, np.arange(10) < 3, 0.3) == 1.0  # bool values


# ---------------------------------------------------------------- edge cases


def test_edge_cases():
    c = np.array([0.3, 0.9, 0.5, 0.1])
    zeros, ones = np.zeros(4), np.ones(4)
    assert aurc(c, zeros) == 0.0 and augrc(c, zeros) == 0.0 and eaurc(c, zeros) == 0.0
    assert aurc(c, ones) == pytest.approx(1.0) and eaurc(c, ones) == pytest.approx(0.0)
    assert augrc(c, ones) == pytest.approx(5 / 8)  # (N + 1)/(2N)
    assert coverage_at_risk(c, zeros, 0.0) == 1.0 and coverage_at_risk(c, ones, 0.5) == 0.0
    # N = 1
    assert aurc([0.7], [1]) == 1.0 and aurc([0.7], [0.25]) == 0.25
    assert augrc([0.7], [0.25]) == 0.25 and eaurc([0.7], [0.25]) == 0.0
    np.testing.assert_allclose(risk_coverage_curve([0.7], [0.25]), [[1.0], [0.25], [0.7]])
    assert risk_at_coverage([0.7], [0.25], 0.01) == 0.25
    # all confidences equal: one point, AURC = mean residual
    cov, risk, thr = risk_coverage_curve(np.ones(4), [1, 0, 0, 0])
    np.testing.assert_allclose([cov, risk, thr], [[1.0], [0.25], [1.0]])
    assert aurc(np.ones(4), [1, 0, 0, 0]) == pytest.approx(0.25)
    assert augrc(np.ones(4), [1, 0, 0, 0]) == pytest.approx(0.25 * 5 / 8)
    # infinite confidences are fine; integer and bool inputs accepted
    assert aurc([np.inf, -np.inf], [0, 1]) == pytest.approx(0.25)
    assert aurc([2, 1], [True, False]) == pytest.approx(0.75)
    # no samples
    for f in (aurc, augrc, eaurc):
        assert math.isnan(f([], []))
    assert math.isnan(risk_at_coverage([], [], 0.5))
    assert math.isnan(coverage_at_risk([], [], 0.5))
    assert math.isnan(selective_metric([], [], 0.5))
    assert all(a.size == 0 for a in risk_coverage_curve([], []))


def test_validation_errors():
    with pytest.raises(ValueError, match="must be 1-D"):
        aurc([[0.1]], [[0]])
    with pytest.raises(ValueError, match="same length"):
        aurc([0.1, 0.2], [0])
    with pytest.raises(ValueError, match="confidence contains 1 NaN"):
        aurc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="residual must be finite"):
        augrc([0.1, 0.2], [0, np.nan])
    with pytest.raises(ValueError, match="real numeric"):
        aurc(["a", "b"], [0, 1])
    for bad in (0.0, -0.5, 1.1, float("nan")):
        with pytest.raises(ValueError, match="coverage"):
            risk_at_coverage([0.1, 0.2], [0, 1], bad)
        with pytest.raises(ValueError, match="coverage"):
            selective_metric([0.1, 0.2], [0, 1], bad)
    with pytest.raises(ValueError, match="max_risk"):
        coverage_at_risk([0.1, 0.2], [0, 1], float("nan"))
