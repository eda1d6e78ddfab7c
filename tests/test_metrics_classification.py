"""Binary classification metrics vs scikit-learn, random data with ties and edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medfail.metrics.classification import (
    auprc,
    auroc,
    brier,
    brier_per_sample,
    f1,
    sens_at_95spec,
    sens_at_spec,
    threshold_at_sensitivity,
    threshold_max_f1,
)

SEEDS = [0, 1, 2, 3, 4, 5]


def sample(seed: int, n: int | None = None, decimals: int | None = None):
    """Labels and scores correlated with them; rounding the scores creates ties."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(20, 400))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    y[:2] = [0, 1]  # both classes present
    s = rng.normal(size=n) + rng.uniform(0.0, 2.0) * y
    if decimals is not None:
        s = np.round(s, decimals)
    return y, s


def sk_sens_at_spec(y, s, spec):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return tpr[fpr <= 1 - spec + 1e-12].max()


# ---------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_auroc_matches_sklearn(seed, decimals):
    y, s = sample(seed, decimals=decimals)
    if decimals == 0:
        assert len(np.unique(s)) < len(s) / 3  # heavy ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_edge_cases():
    y = np.array([0, 1, 0, 1, 1])
    assert auroc(y, np.full(5, 0.3)) == 0.5  # all scores tied
    assert auroc(y, np.array([0.1, 0.9, 0.2, 0.8, 0.7])) == 1.0
    assert auroc(y, -np.array([0.1, 0.9, 0.2, 0.8, 0.7])) == 0.0
    assert auroc(y.astype(bool), np.array([0.1, 0.9, 0.2, 0.8, 0.7])) == 1.0
    # one positive and one negative tied -> counted as 1/2
    assert auroc(np.array([0, 1]), np.array([1.0, 1.0])) == 0.5
    # infinities are valid scores
    assert auroc(np.array([0, 0, 1, 1]), np.array([-np.inf, 0.0, np.inf, np.inf])) == 1.0
    for y1 in (np.zeros(5, int), np.ones(5, int), np.zeros(0, int)):
        assert np.isnan(auroc(y1, np.linspace(0, 1, y1.size)))  # never 0.5


# ---------------------------------------------------------------- AUPRC


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_auprc_matches_sklearn(seed, decimals):
    y, s = sample(seed, decimals=decimals)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_auprc_edge_cases():
    y = np.array([0, 1, 0, 1, 1])
    # all tied: a single threshold, AP = prevalence
    assert auprc(y, np.zeros(5)) == pytest.approx(0.6)
    assert auprc(y, np.zeros(5)) == pytest.approx(average_precision_score(y, np.zeros(5)))
    # hand-computed: ranking 1,0,1 -> AP = 1/2·1 + 1/2·(2/3)
    assert auprc(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx(5 / 6)
    assert auprc(np.ones(4, int), np.array([0.1, 0.2, 0.2, 0.9])) == 1.0
    assert np.isnan(auprc(np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.4])))
    assert np.isnan(auprc(np.zeros(0, int), np.zeros(0)))


# ---------------------------------------------------------------- sensitivity at specificity


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("n", [None, 100, 200])
def test_sens_at_spec_matches_roc_curve(seed, decimals, n):
    # n = 100 / 200 make fpr = 0.05 reachable exactly for some negative counts
    y, s = sample(seed, n=n, decimals=decimals)
    for spec in (0.95, 0.9, 0.8, 0.5, 0.0, 1.0):
        assert sens_at_spec(y, s, spec) == pytest.approx(sk_sens_at_spec(y, s, spec), abs=1e-12)
    assert sens_at_95spec(y, s) == sens_at_spec(y, s, 0.95)


def test_sens_at_spec_exact_specificity_boundary():
    # 20 negatives: the single top-scored negative gives specificity 19/20 = 0.95 exactly
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    s = np.r_[np.arange(20) / 100, 0.5 + np.arange(10) / 100]
    s[19] = 0.545  # the top negative sits among the positives: 5 positives score above it
    assert sens_at_spec(y, s, 0.95) == 1.0  # threshold below all positives allows 1 FP
    assert sens_at_spec(y, s, 0.96) == 0.5  # no FP allowed -> only the 5 above it
    # ties between a negative and positives enter together
    s2 = np.r_[np.zeros(19), 0.7, np.full(10, 0.7)]
    assert sens_at_spec(y, s2, 0.96) == 0.0
    assert sens_at_spec(y, s2, 0.95) == 1.0


def test_sens_at_spec_edge_cases():
    assert np.isnan(sens_at_95spec(np.ones(5, int), np.arange(5.0)))
    assert np.isnan(sens_at_95spec(np.zeros(5, int), np.arange(5.0)))
    assert sens_at_spec(np.array([0, 1, 0, 1]), np.full(4, 0.2), 0.95) == 0.0
    assert sens_at_spec(np.array([0, 1, 0, 1]), np.full(4, 0.2), 0.0) == 1.0
    with pytest.raises(ValueError, match=r"specificity must be in \[0, 1\], got 95"):
        sens_at_spec(np.array([0, 1]), np.array([0.1, 0.2]), 95)


# ---------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    for p_true, p_pred in ((0.3, 0.3), (0.05, 0.6), (0.5, 0.02)):
        y = (rng.random(50) < p_true).astype(int)
        yp = (rng.random(50) < p_pred).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = f1_score(y, yp, zero_division=np.nan)
        np.testing.assert_allclose(f1(y, yp), ref, rtol=1e-12)


def test_f1_edge_cases():
    zeros = np.zeros(6, int)
    assert np.isnan(f1(zeros, zeros))  # no positives anywhere -> undefined
    assert np.isnan(f1(np.zeros(0, int), np.zeros(0, int)))
    assert f1(zeros, np.r_[1, zeros[1:]]) == 0.0  # only a false positive
    assert f1(np.r_[1, zeros[1:]], zeros) == 0.0  # only a false negative
    assert f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == 0.5
    assert f1(np.array([True, False]), np.array([True, False])) == 1.0
    with pytest.raises(ValueError, match=r"y_pred must contain only 0 and 1.*\[0\.7\]"):
        f1(np.array([1, 0]), np.array([0.7, 0.0]))


# ---------------------------------------------------------------- Brier


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.3).astype(int)
    p = np.clip(rng.random(200) * 0.5 + 0.4 * y, 0, 1)
    p[:3] = [0.0, 1.0, 0.5]
    per = brier_per_sample(y, p)
    assert per.shape == (200,) and per.dtype == np.float64
    np.testing.assert_allclose(per, (p - y) ** 2, rtol=0, atol=0)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)


def test_brier_edge_cases():
    assert brier(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    assert brier(np.array([1, 0]), np.array([0.0, 1.0])) == 1.0
    assert brier(np.array([1]), np.array([0.5])) == 0.25
    assert np.isnan(brier(np.zeros(0, int), np.zeros(0)))
    with pytest.raises(ValueError, match=r"y_prob must be probabilities in \[0, 1\].*1\.2"):
        brier(np.array([1, 0]), np.array([1.2, 0.0]))


# ---------------------------------------------------------------- threshold selection


def brute_max_f1_threshold(y, s) -> float:
    """Loop over distinct scores (highest first) with sklearn's f1_score; keep strict gains."""
    best_t, best = None, -1.0
    for t in np.unique(s)[::-1]:
        val = f1_score(y, (s >= t).astype(int))
        if val > best:
            best_t, best = t, val
    return float(best_t)


def brute_threshold_at_sens(y, s, sens) -> float:
    ok = [t for t in np.unique(s) if np.mean(s[y == 1] >= t) >= sens - 1e-12]
    return float(max(ok))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_threshold_max_f1_matches_brute_force(seed, decimals):
    y, s = sample(seed, n=50, decimals=decimals)
    t = threshold_max_f1(y, s)
    assert t == brute_max_f1_threshold(y, s)
    assert t in s
    best = f1_score(y, (s >= t).astype(int))
    assert f1(y, (s >= t).astype(int)) == pytest.approx(best, abs=1e-12)


def test_threshold_max_f1_ties_and_edge_cases():
    # F1 at t = 0.9: 2/3 (TP 1, FN 1); t = 0.5: 2/3 (TP 2, FP 2); t = 0.1: 4/7 -> tie, highest
    y = np.array([1, 0, 0, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    assert f1_score(y, s >= 0.9) == pytest.approx(f1_score(y, s >= 0.5))
    assert threshold_max_f1(y, s) == 0.9
    # perfectly separated: the lowest positive score
    assert threshold_max_f1(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.8])) == 0.7
    # all scores tied: the only threshold
    assert threshold_max_f1(np.array([0, 1, 0]), np.full(3, 0.3)) == 0.3
    # bool labels, integer scores, infinities
    assert threshold_max_f1(np.array([False, True]), np.array([0, 3])) == 3.0
    assert threshold_max_f1(np.array([0, 1, 1]), np.array([-np.inf, 1.0, np.inf])) == 1.0
    # one class or no samples -> 0.5 (documented neutral default)
    assert threshold_max_f1(np.zeros(4, int), np.arange(4.0)) == 0.5
    assert threshold_max_f1(np.ones(4, int), np.arange(4.0)) == 0.5
    assert threshold_max_f1(np.zeros(0, int), np.zeros(0)) == 0.5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1])
def test_threshold_at_sensitivity_matches_brute_force_and_roc_curve(seed, decimals):
    y, s = sample(seed, n=100, decimals=decimals)
    _, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    for sens in (1.0, 0.95, 0.9, 0.8, 0.5, 0.0):
        t = threshold_at_sensitivity(y, s, sens)
        assert t == brute_threshold_at_sens(y, s, sens)
        ok = tpr[1:] >= sens - 1e-12  # drop sklearn's leading +inf threshold
        assert t == thr[1:][ok][0]
    assert threshold_at_sensitivity(y, s, 0.0) == s.max()
    assert threshold_at_sensitivity(y, s, 1.0) == s[y == 1].min()
    t = threshold_at_sensitivity(y, s, 0.9)
    assert recall_score(y, (s >= t).astype(int)) >= 0.9
    assert recall_score(y, (s > t).astype(int)) < 0.9  # the next higher threshold misses it


def test_threshold_at_sensitivity_edge_cases():
    # 20 positives: 19/20 = 0.95 exactly is reached (rounding slack)
    y = np.r_[np.ones(20, int), np.zeros(5, int)]
    s = np.r_[np.arange(20) / 10 + 1.0, np.arange(5) / 10]
    assert threshold_at_sensitivity(y, s, 0.95) == 1.1
    assert threshold_at_sensitivity(y, s) == 1.1  # default 0.95
    assert threshold_at_sensitivity(y, s, 0.951) == 1.0
    # ties between positives and negatives enter together
    y2 = np.array([1, 1, 0, 1])
    s2 = np.array([0.9, 0.4, 0.4, 0.2])
    assert threshold_at_sensitivity(y2, s2, 0.6) == 0.4
    assert threshold_at_sensitivity(np.ones(3, int), np.array([0.2, 0.5, 0.9]), 0.5) == 0.5
    assert np.isnan(threshold_at_sensitivity(np.zeros(3, int), np.arange(3.0), 0.9))
    assert np.isnan(threshold_at_sensitivity(np.zeros(0, int), np.zeros(0), 0.9))
    for bad in (-0.1, 1.01, 95):
        with pytest.raises(ValueError, match=r"sensitivity must be in \[0, 1\], got"):
            threshold_at_sensitivity(np.array([0, 1]), np.array([0.1, 0.2]), bad)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "fn", [auroc, auprc, sens_at_95spec, threshold_max_f1, threshold_at_sensitivity]
)
def test_score_validation(fn):
    y = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match=r"y_true \(4,\) and y_score \(3,\)"):
        fn(y, np.zeros(3))
    with pytest.raises(ValueError, match=r"y_true must be 1-D, got shape \(2, 2\)"):
        fn(y.reshape(2, 2), np.zeros(4))
    with pytest.raises(ValueError, match=r"y_score must be 1-D, got shape \(4, 1\)"):
        fn(y, np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"y_true must contain only 0 and 1.*\[2\]"):
        fn(np.array([0, 1, 2, 0]), np.zeros(4))
    with pytest.raises(ValueError, match=r"y_true must contain only 0 and 1.*-1"):
        fn(np.array([0, 1, -1, 0]), np.zeros(4))
    with pytest.raises(ValueError, match=r"y_score contains 2 NaN value\(s\)"):
        fn(y, np.array([0.1, np.nan, 0.3, np.nan]))
    with pytest.raises(ValueError, match=r"y_score must be numeric"):
        fn(y, np.array(["a", "b", "c", "d"]))


def test_brier_and_f1_validation():
    with pytest.raises(ValueError, match=r"y_true \(3,\) and y_prob \(2,\)"):
        brier(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"y_prob contains 1 NaN"):
        brier_per_sample(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"y_true \(2,\) and y_pred \(3,\)"):
        f1(np.array([0, 1]), np.array([0, 1, 1]))
