"""Calibration metrics vs torchmetrics, scikit-learn and brute-force references; edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from medfail.metrics.calibration import (
    ReliabilityBins,
    adaptive_ece,
    bin_edges,
    brier,
    brier_multiclass,
    ece,
    ece_top_label,
    nll,
    nll_multiclass,
    reliability_bins,
    top_label,
)

SEEDS = [0, 1, 2, 3, 4]


def binary_sample(seed: int, n: int | None = None):
    """Labels and somewhat miscalibrated probabilities (never exactly 0 or 1)."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(50, 500))
    p = rng.beta(rng.uniform(0.5, 3), rng.uniform(0.5, 3), size=n)
    y = (rng.random(n) < p**1.5).astype(int)
    return y, np.clip(p, 1e-9, 1 - 1e-9)


def multiclass_sample(seed: int, n: int | None = None, k: int | None = None):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(50, 500))
    k = k or int(rng.integers(3, 8))
    probs = rng.dirichlet(np.full(k, rng.uniform(0.3, 2.0)), size=n)
    labels = np.array([rng.choice(k, p=row**2 / (row**2).sum()) for row in probs])
    return labels, probs


def tm_binary(y, p, n_bins):
    metric = BinaryCalibrationError(n_bins=n_bins, norm="l1")
    return float(metric(torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(y)))


def tm_multiclass(labels, probs, n_bins):
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)))


def torch_edges_exact(n_bins: int, dtype) -> np.ndarray:
    """Edges b/n_bins (0 < b < n_bins) that torch.linspace, as torchmetrics builds them, hits
    exactly in the given dtype (torch.linspace rounds some edges, e.g. 0.3 for n_bins=10)."""
    t = torch.linspace(0, 1, n_bins + 1, dtype=dtype).numpy()
    exact = (np.arange(n_bins + 1) / n_bins).astype(t.dtype)
    return (np.arange(n_bins + 1) / n_bins)[1:-1][(t == exact)[1:-1]]


def brute_ece(y, p, edges):
    """Loop over bins [lo, hi) (last bin closed) -- the documented convention."""
    n, total = len(y), 0.0
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        last = b == len(edges) - 2
        members = [i for i in range(n) if lo <= p[i] and (p[i] < hi or (last and p[i] <= hi))]
        if members:
            acc = sum(y[i] for i in members) / len(members)
            conf = sum(p[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def brute_quantile_edges(p, n_bins):
    """Quantile edges by hand: linear interpolation at position (N − 1)·b/B of sorted p."""
    s = sorted(p)
    edges = [0.0]
    for b in range(1, n_bins):
        h = (len(s) - 1) * b / n_bins
        lo = math.floor(h)
        hi = min(lo + 1, len(s) - 1)
        edges.append(s[lo] + (h - lo) * (s[hi] - s[lo]))
    return [*edges, 1.0]


# ---------------------------------------------------------------- ECE vs torchmetrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 20])
def test_ece_matches_torchmetrics_binary(seed, n_bins):
    y, p = binary_sample(seed)
    assert ece(y, p, n_bins) == pytest.approx(tm_binary(y, p, n_bins), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [4, 5, 8, 10, 15])
def test_ece_on_bin_edges_matches_torchmetrics(seed, n_bins):
    """Probabilities exactly on edges (0.2, 0.4 for n_bins=5) pin the [lo, hi) convention."""
    rng = np.random.default_rng(seed)
    on_edge = torch_edges_exact(n_bins, torch.float64)
    assert on_edge.size  # e.g. n_bins=5: 0.2 0.4 0.6 0.8
    p = np.concatenate([[0.0], rng.choice(on_edge, 200), rng.random(100) * 0.999])
    y = (rng.random(p.size) < p).astype(int)
    assert ece(y, p, n_bins) == pytest.approx(tm_binary(y, p, n_bins), abs=1e-12)
    assert ece(y, p, n_bins) == pytest.approx(brute_ece(y, p, np.arange(n_bins + 1) / n_bins))


def test_edge_value_goes_to_upper_bin():
    rb = reliability_bins([1, 0, 1, 0], [0.2, 0.4, 0.39999, 0.0], n_bins=5)
    np.testing.assert_array_equal(rb.counts, [1, 2, 1, 0, 0])  # 0.2 in [0.2, 0.4)
    # 0.3 is the edge 3/10 here; torch.linspace(0, 1, 11)[3] = 0.30000000000000004
    rb = reliability_bins([1], [0.3], n_bins=10)
    assert rb.counts[3] == 1


def test_probability_one_in_last_bin():
    """p = 1.0 belongs to the closed last bin [0.8, 1]. (torchmetrics 1.9 puts it in an extra
    bin of its own and would give 0.05/2 + 1/2 = 0.525 here -- see docs/calibration.md.)"""
    y, p = np.array([1, 0]), np.array([0.95, 1.0])
    rb = reliability_bins(y, p, n_bins=5)
    np.testing.assert_array_equal(rb.counts, [0, 0, 0, 0, 2])
    assert ece(y, p, n_bins=5) == pytest.approx(abs(0.5 - 0.975))
    # without the exact 1.0 both agree
    q = np.array([0.95, 1.0 - 1e-9])
    assert ece(y, q, 5) == pytest.approx(tm_binary(y, q, 5), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_top_label_matches_torchmetrics_multiclass(seed, n_bins):
    labels, probs = multiclass_sample(seed)
    ours = ece_top_label(labels, probs, n_bins)
    assert ours == pytest.approx(tm_multiclass(labels, probs, n_bins), abs=2e-6)  # tm: float32


@pytest.mark.parametrize("n_bins", [4, 5, 8])
def test_ece_top_label_on_bin_edges_matches_torchmetrics(n_bins):
    """Top-label confidences exactly on edges exact in float32 (torchmetrics casts)."""
    rng = np.random.default_rng(7)
    edges = [e for e in torch_edges_exact(n_bins, torch.float32) if e >= 1 / 3]
    rows = []
    for e in rng.choice(edges, 300):
        rest = rng.dirichlet([1.0, 1.0]) * (1 - e)
        while rest.max() >= e:
            rest = rng.dirichlet([1.0, 1.0]) * (1 - e)
        rows.append(rng.permutation([e, *rest]))
    probs = np.array(rows)
    labels = rng.integers(0, 3, len(rows))
    conf = probs.max(1)
    assert np.isin(conf, edges).all()
    assert ece_top_label(labels, probs, n_bins) == pytest.approx(
        tm_multiclass(labels, probs, n_bins), abs=2e-6
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_ece_top_label_binary_view(seed):
    """1-D probs = P(y=1) -> top-label ECE of [1 − p, p] (torchmetrics multiclass, K=2)."""
    y, p = binary_sample(seed)
    stacked = np.stack([1 - p, p], axis=1)
    assert ece_top_label(y, p) == pytest.approx(ece_top_label(y, stacked), abs=1e-15)
    assert ece_top_label(y, p) == pytest.approx(tm_multiclass(y, stacked, 15), abs=2e-6)
    correct, conf = top_label(y, p)
    np.testing.assert_array_equal(correct, ((p > 0.5).astype(int) == y).astype(int))
    np.testing.assert_allclose(conf, np.maximum(p, 1 - p))


def test_top_label_ties_take_first_class():
    correct, conf = top_label([1, 1], np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]]))
    np.testing.assert_array_equal(correct, [0, 1])
    np.testing.assert_array_equal(conf, [0.4, 0.4])
    assert ece_top_label([1, 1], [[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]], 5) == pytest.approx(0.1)


# ---------------------------------------------------------------- adaptive ECE, bins


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 3, 10, 15])
def test_adaptive_ece_matches_brute_force(seed, n_bins):
    y, p = binary_sample(seed)
    if seed % 2:
        p = np.round(p, 1)  # heavy ties: repeated quantile edges, empty bins
    edges = brute_quantile_edges(p.tolist(), n_bins)
    np.testing.assert_allclose(bin_edges(p, n_bins, "quantile"), edges, rtol=0, atol=1e-15)
    assert adaptive_ece(y, p, n_bins) == pytest.approx(brute_ece(y, p, edges), abs=1e-12)
    assert adaptive_ece(y, p, n_bins) == ece(y, p, n_bins, strategy="quantile")


@pytest.mark.parametrize("n", [2, 7, 10, 100, 1001])
@pytest.mark.parametrize("n_bins", [3, 4, 15])
def test_quantile_bins_are_equal_mass(n, n_bins):
    p = np.random.default_rng(n).random(n)
    counts = reliability_bins(np.zeros(n, int), p, n_bins, "quantile").counts
    assert counts.sum() == n
    assert set(counts.tolist()) <= {n // n_bins, -(-n // n_bins)}


@pytest.mark.parametrize("seed", SEEDS)
def test_reliability_bins_match_sklearn_calibration_curve(seed):
    """Equal-width bins (no p on an edge; sklearn's bins are (lo, hi], so its quantile bins,
    whose edges often are data points, put those points one bin lower)."""
    y, p = binary_sample(seed)
    rb = reliability_bins(y, p, 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    full = rb.counts > 0
    np.testing.assert_allclose(rb.frequency[full], prob_true, atol=1e-12)
    np.testing.assert_allclose(rb.mean_confidence[full], prob_pred, atol=1e-12)
    assert np.isnan(rb.frequency[~full]).all() and np.isnan(rb.mean_confidence[~full]).all()


def test_reliability_bins_fields():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.55, 0.65, 0.95])
    rb = reliability_bins(y, p, n_bins=4)
    assert isinstance(rb, ReliabilityBins)
    np.testing.assert_array_equal(rb.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(rb.counts, [2, 0, 2, 1])
    np.testing.assert_allclose(rb.mean_confidence, [0.1, np.nan, 0.6, 0.95])
    np.testing.assert_allclose(rb.frequency, [0.5, np.nan, 0.5, 1.0])
    assert rb.n_samples == 5 and rb.strategy == "uniform"
    assert rb.ece == pytest.approx(2 / 5 * 0.4 + 2 / 5 * 0.1 + 1 / 5 * 0.05)


# ---------------------------------------------------------------- calibrated / edge cases


def test_perfectly_calibrated_gives_small_ece():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert ece(y, p) < 0.01
    assert adaptive_ece(y, p) < 0.01
    labels = np.array([0] * 5)  # sanity: a badly calibrated model is not small
    assert ece(labels, np.full(5, 0.9)) == pytest.approx(0.9)
    y_bad = (rng.random(p.size) < p**3).astype(int)
    assert ece(y_bad, p) > 0.1


def test_ece_edge_cases():
    assert math.isnan(ece([], []))
    assert math.isnan(adaptive_ece([], []))
    assert reliability_bins([], []).counts.sum() == 0
    assert ece([1], [0.3]) == pytest.approx(0.7)  # N = 1
    assert adaptive_ece([0], [0.3]) == pytest.approx(0.3)
    y = np.array([1, 0, 0, 1, 1])
    for strategy in ("uniform", "quantile"):  # all the same probability
        assert ece(y, np.full(5, 0.7), 10, strategy) == pytest.approx(0.1)
    # empty bins contribute nothing: everything in [0, 0.1)
    assert ece([0, 1, 0, 0], [0.01, 0.02, 0.05, 0.09], n_bins=10) == pytest.approx(0.25 - 0.0425)
    # p = 0 and p = 1 are counted (first and last bin)
    np.testing.assert_array_equal(reliability_bins([0, 1], [0.0, 1.0], 3).counts, [1, 0, 1])
    assert ece([0, 1], [0.0, 1.0]) == 0.0
    assert ece(np.array([True, False]), [0.8, 0.1], n_bins=2) == pytest.approx(0.15)


def test_validation_errors():
    with pytest.raises(ValueError, match="must be 1-D"):
        ece([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="same length"):
        ece([0, 1], [0.5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ece([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ece([0, 1], [0.5, 1.2])
    with pytest.raises(ValueError, match="NaN"):
        nll([0, 1], [0.5, np.nan])
    for bad in (0, 2.5, True, -1):
        with pytest.raises(ValueError, match="n_bins"):
            ece([0, 1], [0.5, 0.5], n_bins=bad)
    with pytest.raises(ValueError, match="strategy"):
        ece([0, 1], [0.5, 0.5], strategy="equal")
    with pytest.raises(ValueError, match="sum to 1"):
        ece_top_label([0, 1], [[0.5, 0.6], [0.3, 0.7]])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        brier_multiclass([0], [[2.0, -1.0]])
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        nll_multiclass([0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="K >= 2"):
        brier_multiclass([0], [[1.0]])
    with pytest.raises(ValueError, match="same number of samples"):
        nll_multiclass([0, 1], np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="eps"):
        nll([0, 1], [0.2, 0.3], eps=0.0)


# ---------------------------------------------------------------- Brier, NLL


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_and_nll_match_sklearn(seed):
    y, p = binary_sample(seed)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_brier_and_nll_match_sklearn(seed):
    labels, probs = multiclass_sample(seed)
    k = probs.shape[1]
    ref = brier_score_loss(labels, probs, labels=list(range(k)), scale_by_half=False)
    assert brier_multiclass(labels, probs) == pytest.approx(ref, abs=1e-12)
    onehot = np.eye(k)[labels]
    assert brier_multiclass(labels, probs) == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    probs = np.clip(probs, 1e-6, None)
    probs /= probs.sum(1, keepdims=True)
    ref = log_loss(labels, probs, labels=list(range(k)))
    assert nll_multiclass(labels, probs) == pytest.approx(ref, rel=1e-10)


def test_brier_nll_edge_cases():
    y, p = np.array([1, 0, 1]), np.array([0.8, 0.3, 0.6])
    assert brier_multiclass(y, np.stack([1 - p, p], 1)) == pytest.approx(2 * brier(y, p))
    assert nll_multiclass(y, np.stack([1 - p, p], 1)) == pytest.approx(nll(y, p))
    assert nll([1], [0.0]) == pytest.approx(-math.log(1e-12))  # clipped, finite
    assert nll([1], [0.0], eps=1e-6) == pytest.approx(-math.log(1e-6))
    assert nll([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-12))
    assert nll_multiclass([2], [[0.5, 0.5, 0.0]]) == pytest.approx(-math.log(1e-12))
    for f in (brier, nll):
        assert math.isnan(f([], []))
    for f in (brier_multiclass, nll_multiclass):
        assert math.isnan(f(np.empty(0, int), np.empty((0, 3))))
    assert brier_multiclass([1], [[0.0, 1.0, 0.0]]) == 0.0
