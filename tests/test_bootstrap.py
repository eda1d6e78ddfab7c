"""Bootstrap CIs: naive-loop equivalence, sklearn AUROC per resample, pairing, sanity."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import medfail.metrics.bootstrap as bs
from medfail.metrics.bootstrap import (
    auroc_bootstrap,
    bootstrap_indices,
    bootstrap_statistic,
    mean_ci,
    paired_delta_ci,
    paired_statistic_delta_ci,
    percentile_ci,
    statistic_ci,
)
from medfail.metrics.classification import auroc


def naive_auroc_loop(y, s, idx):
    out = []
    for row in idx:
        yr = y[row]
        out.append(roc_auc_score(yr, s[row]) if 0 < yr.sum() < len(yr) else np.nan)
    return np.array(out)


def test_bootstrap_indices_shape_dtype_reproducible():
    idx = bootstrap_indices(50, n_resamples=200, seed=3)
    assert idx.shape == (200, 50) and idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < 50
    np.testing.assert_array_equal(idx, bootstrap_indices(50, 200, seed=3))
    expected = np.random.default_rng(3).integers(0, 50, size=(200, 50), dtype=np.int32)
    np.testing.assert_array_equal(idx, expected)
    assert not np.array_equal(idx, bootstrap_indices(50, 200, seed=4))
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0"):
        bootstrap_indices(0)
    with pytest.raises(ValueError, match=r"n_resamples must be >= 1, got 0"):
        bootstrap_indices(5, n_resamples=0)


def test_percentile_ci():
    stats = np.arange(101, dtype=float)
    assert percentile_ci(stats, alpha=0.1) == (5.0, 95.0)
    assert percentile_ci(stats) == (2.5, 97.5)
    lo, hi = percentile_ci(np.full(10, np.nan))
    assert np.isnan(lo) and np.isnan(hi)
    assert np.isnan(percentile_ci(np.zeros(0))[0])
    lo, hi = percentile_ci(np.random.default_rng(0).normal(size=500))
    assert isinstance(lo, float) and lo < hi
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 1.5"):
        percentile_ci(stats, alpha=1.5)
    with pytest.raises(ValueError, match=r"stats must be 1-D, got shape \(2, 3\)"):
        percentile_ci(np.zeros((2, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_ci_matches_naive_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    v = rng.random(137)
    v[rng.random(137) < 0.1] = np.nan
    idx = bootstrap_indices(137, 300, seed=seed)
    naive = np.array([np.nanmean(v[row]) for row in idx])
    lo, hi = np.nanpercentile(naive, [2.5, 97.5])
    assert mean_ci(v, idx) == pytest.approx((lo, hi), abs=1e-12)
    # processing in small row blocks gives the same answer
    monkeypatch.setattr(bs, "_BLOCK_ELEMS", 137 * 7)
    assert mean_ci(v, idx) == pytest.approx((lo, hi), abs=1e-12)


def _quantile(x_sorted: np.ndarray, q: float) -> float:
    """numpy's default (linear) percentile of sorted values, by hand so that ±inf stays
    ±inf (a bound that an undefined resample reaches)."""
    pos = q / 100 * (len(x_sorted) - 1)
    i = int(np.floor(pos))
    t = pos - i
    with np.errstate(invalid="ignore"):  # -inf + inf: the bound is not reported either way
        return float(x_sorted[i] if t == 0 else
                     x_sorted[i] + t * (x_sorted[i + 1] - x_sorted[i]))


def _outside_ci(stats: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The documented rule, independently: undefined resamples at -inf for the lower bound
    and +inf for the upper; a bound that is then infinite is not reported (both NaN)."""
    if len(stats) == 0:
        return float("nan"), float("nan")
    lo = _quantile(np.sort(np.where(np.isnan(stats), -np.inf, stats)), 100 * alpha / 2)
    hi = _quantile(np.sort(np.where(np.isnan(stats), np.inf, stats)), 100 * (1 - alpha / 2))
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (float("nan"), float("nan"))


def test_percentile_ci_never_drops_undefined_resamples():
    # the old rule dropped the NaN resamples: 50 undefined of 151 gave (5, 95) at alpha=0.1
    stats = np.r_[np.arange(101, dtype=float), np.full(50, np.nan)]
    assert np.isnan(percentile_ci(stats, alpha=0.1)).all()
    assert bs.max_undefined(1000) == 24 and bs.max_undefined(50) == 1
    assert bs.max_undefined(40) == 0 and bs.max_undefined(41) == 1
    rng = np.random.default_rng(4)
    for k in (0, 1, 10, 24, 25, 200):
        s = rng.normal(size=1000)
        s[rng.choice(1000, k, replace=False)] = np.nan
        lo, hi = percentile_ci(s)
        olo, ohi = _outside_ci(s)
        assert (np.isnan(lo), np.isnan(hi)) == (np.isnan(olo), np.isnan(ohi)) == (k > 24,) * 2
        if k <= 24:
            assert (lo, hi) == pytest.approx((olo, ohi), abs=1e-12)
            # wherever the undefined resamples lie, the interval covers the one they give
            for fill in (s[~np.isnan(s)].min(), 0.0, s[~np.isnan(s)].max()):
                flo, fhi = np.percentile(np.where(np.isnan(s), fill, s), [2.5, 97.5])
                assert lo <= flo + 1e-12 and fhi <= hi + 1e-12
            kept = np.percentile(s[~np.isnan(s)], [2.5, 97.5])  # the old, dropping rule
            assert lo <= kept[0] + 1e-12 and kept[1] <= hi + 1e-12


def test_mean_ci_resample_without_finite_value_is_undefined():
    v = np.array([1.0, np.nan, 3.0])
    idx = bootstrap_indices(3, 1000, seed=0)
    undefined = np.all(idx == 1, axis=1)
    assert undefined.sum() > 24  # (1/3)^3 of the resamples draw only the NaN sample
    assert np.isnan(mean_ci(v, idx)).all()  # the old rule dropped them: (1.0, 3.0)
    few = idx[~undefined][:990]
    few = np.r_[few, idx[undefined][:10]]  # 10 undefined of 1000: reported, never narrower
    naive = np.array([np.nanmean(v[row]) if np.isfinite(v[row]).any() else np.nan
                      for row in few])
    assert mean_ci(v, few) == pytest.approx(_outside_ci(naive), abs=1e-12)
    assert np.isnan(mean_ci(np.full(3, np.nan), idx)[0])


def test_mean_ci_sanity_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 200, 800):
        v = rng.normal(loc=3.0, size=n)
        lo, hi = mean_ci(v, bootstrap_indices(n, 1000, seed=1))
        assert lo < v.mean() < hi
        assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(n), rel=0.15)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_mean_ci_coverage():
    # 95% CIs for the mean of N(0, 1) samples cover 0 in roughly 95% of experiments
    rng = np.random.default_rng(11)
    idx = bootstrap_indices(60, 400, seed=0)
    covered = [
        lo <= 0.0 <= hi for lo, hi in (mean_ci(rng.normal(size=60), idx) for _ in range(200))
    ]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_paired_delta_ci_is_paired():
    rng = np.random.default_rng(5)
    n = 300
    base = rng.normal(size=n) * 5.0  # large between-sample spread
    a = base
    b = base + 0.1 + rng.normal(size=n) * 0.05  # small, consistent improvement
    idx = bootstrap_indices(n, 1000, seed=2)
    lo, hi = paired_delta_ci(a, b, idx)
    assert 0.0 < lo < 0.1 < hi < 0.2  # pairing removes the between-sample spread
    naive = np.array([np.mean(b[row] - a[row]) for row in idx])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])), abs=1e-12)
    # a sample with NaN in either condition is dropped from the mean
    a2 = a.copy()
    a2[0] = np.nan
    naive2 = np.array([np.nanmean((b - a2)[row]) for row in idx])
    assert paired_delta_ci(a2, b, idx) == pytest.approx(
        tuple(np.percentile(naive2, [2.5, 97.5])), abs=1e-12
    )
    with pytest.raises(ValueError, match=r"same length, got \(300,\) and \(299,\)"):
        paired_delta_ci(a, b[:-1], idx)


def test_statistic_ci_and_paired_statistic_delta():
    rng = np.random.default_rng(2)
    n = 120
    y = (rng.random(n) < 0.4).astype(int)
    s_a = rng.normal(size=n) + 0.5 * y
    s_b = s_a + 1.0 * y  # condition b separates better
    idx = bootstrap_indices(n, 200, seed=0)
    stats = bootstrap_statistic(auroc, (y, s_a), idx)
    np.testing.assert_allclose(stats, naive_auroc_loop(y, s_a, idx), atol=1e-12)
    np.testing.assert_allclose(stats, auroc_bootstrap(y, s_a, idx), atol=1e-12)
    lo, hi = statistic_ci(auroc, (y, s_a), idx)
    assert lo < auroc(y, s_a) < hi
    assert (lo, hi) == pytest.approx(percentile_ci(stats), abs=0)
    dlo, dhi = paired_statistic_delta_ci(auroc, (y, s_a), (y, s_b), idx)
    deltas = auroc_bootstrap(y, s_b, idx) - auroc_bootstrap(y, s_a, idx)
    assert (dlo, dhi) == pytest.approx(percentile_ci(deltas), abs=1e-12)
    assert 0 < dlo < auroc(y, s_b) - auroc(y, s_a) < dhi
    # mean as a statistic equals mean_ci
    v = rng.random(n)
    assert statistic_ci(np.mean, (v,), idx) == pytest.approx(mean_ci(v, idx), abs=1e-12)
    # 2-D arrays are resampled along their first axis
    m = np.c_[v, 2 * v]
    stat2 = bootstrap_statistic(lambda x: x[:, 1].mean(), (m,), idx)
    np.testing.assert_allclose(stat2, 2 * bootstrap_statistic(np.mean, (v,), idx))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_bootstrap_matches_sklearn_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(size=n) + y, 1)  # many ties
    assert len(np.unique(s)) < n / 3
    idx = bootstrap_indices(n, 200, seed=seed)
    ref = naive_auroc_loop(y, s, idx)
    got = auroc_bootstrap(y, s, idx)
    assert got.shape == (200,) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, atol=1e-12, rtol=0)
    monkeypatch.setattr(bs, "_BLOCK_ELEMS", 3 * n)  # several row blocks
    np.testing.assert_allclose(auroc_bootstrap(y.astype(bool), s, idx), ref, atol=1e-12, rtol=0)


def test_auroc_bootstrap_single_class_resamples_are_nan():
    y = np.array([0, 0, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.4, 0.4, 0.9])
    idx = bootstrap_indices(5, 300, seed=0)
    got = auroc_bootstrap(y, s, idx)
    one_class = np.array([len(np.unique(y[row])) == 1 for row in idx])
    assert one_class.any() and (~one_class).any()
    assert np.all(np.isnan(got[one_class]))
    np.testing.assert_allclose(got[~one_class], naive_auroc_loop(y, s, idx[~one_class]), atol=1e-12)
    # explicit rows: only negatives / only the positive / tie between positive and negatives
    rows = np.array([[0, 1, 2, 4, 0], [3, 3, 3, 3, 3], [3, 1, 2, 1, 3], [3, 0, 4, 0, 0]])
    out = auroc_bootstrap(y, s, rows)
    assert np.isnan(out[0]) and np.isnan(out[1])
    assert out[2] == 0.5  # positive tied with every negative
    assert out[3] == pytest.approx(roc_auc_score(y[rows[3]], s[rows[3]]))
    assert np.all(np.isnan(auroc_bootstrap(np.ones(5, int), s, rows)))


def test_bootstrap_validation_errors():
    idx = bootstrap_indices(10, 5)
    with pytest.raises(ValueError, match=r"drawn for 10 samples \(shape \(5, 10\)\).*has 8"):
        mean_ci(np.zeros(8), idx)
    with pytest.raises(ValueError, match=r"2-D \(n_resamples, n\) array, got shape \(10,\)"):
        mean_ci(np.zeros(10), idx[0])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\), got values in"):
        mean_ci(np.zeros(10), idx + 5)
    with pytest.raises(ValueError, match=r"indices must be integers, got dtype float64"):
        mean_ci(np.zeros(10), idx.astype(float))
    with pytest.raises(ValueError, match=r"same first-axis length, got shapes \[\(10,\), \(9,\)\]"):
        statistic_ci(auroc, (np.zeros(10), np.zeros(9)), idx)
    with pytest.raises(ValueError, match=r"same samples, got lengths 10 and 9"):
        paired_statistic_delta_ci(np.mean, (np.zeros(10),), (np.zeros(9),), idx)
    with pytest.raises(ValueError, match=r"y_true and y_score must have the same length"):
        auroc_bootstrap(np.zeros(10), np.zeros(9), idx)
    with pytest.raises(ValueError, match=r"y_true must contain only 0 and 1"):
        auroc_bootstrap(np.full(10, 2), np.zeros(10), idx)
    with pytest.raises(ValueError, match=r"y_score contains 1 NaN"):
        auroc_bootstrap(np.zeros(10), np.r_[np.nan, np.zeros(9)], idx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_and_sens_bootstrap_equal_loops(seed: int) -> None:
    from sklearn.metrics import average_precision_score

    from medfail.metrics.bootstrap import auprc_bootstrap, sens_at_spec_bootstrap
    from medfail.metrics.classification import sens_at_spec

    rng = np.random.default_rng(seed)
    n = 120
    y = (rng.random(n) < 0.4).astype(int)
    s = np.round(rng.random(n) + 0.3 * y, 1)  # heavy ties
    idx = bootstrap_indices(n, 200, seed)
    ap = auprc_bootstrap(y, s, idx)
    sens = sens_at_spec_bootstrap(y, s, idx, 0.95)
    for b, row in enumerate(idx):
        yb, sb = y[row], s[row]
        if yb.min() == yb.max():
            assert np.isnan(sens[b])
            continue
        assert ap[b] == pytest.approx(average_precision_score(yb, sb), abs=1e-12)
        assert sens[b] == pytest.approx(sens_at_spec(yb, sb, 0.95), abs=1e-12)
    tiny = np.array([[0, 0, 0], [0, 1, 2]])
    assert np.isnan(auprc_bootstrap(np.array([0, 1, 1]), np.array([0.1, 0.5, 0.7]), tiny)[0])


@pytest.mark.parametrize("pos_rate", [0.1, 0.5, 0.9])  # 0.9: the class-swapped path
@pytest.mark.parametrize("n_levels", [2, 5, 40, None])  # None: continuous scores, no ties
def test_auroc_bootstrap_equals_sklearn_loop_heavy_ties(pos_rate, n_levels, monkeypatch):
    rng = np.random.default_rng(11)
    n = 257
    y = (rng.random(n) < pos_rate).astype(int)
    raw = rng.normal(size=n) + 0.7 * y
    s = raw if n_levels is None else np.floor(rng.random(n) * n_levels) + (raw > 1.0)
    s[:5] = -s[:5] * 0.0  # -0.0 and 0.0 must tie, as in sklearn
    idx = bootstrap_indices(n, 150, seed=5)
    ref = naive_auroc_loop(y, s, idx)
    np.testing.assert_allclose(auroc_bootstrap(y, s, idx), ref, atol=1e-12, rtol=0)
    np.testing.assert_allclose(auroc_bootstrap(1 - y, -s, idx), ref, atol=1e-12, rtol=0)
    monkeypatch.setattr(bs, "_BLOCK_ELEMS", 7)  # one resample per block
    np.testing.assert_allclose(auroc_bootstrap(y == 1, s, idx), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("y", [[0, 1, 1], [1, 0, 0], [0, 1, 0]])
@pytest.mark.parametrize("s", [[0.2, 0.2, 0.2], [0.1, 0.5, 0.3], [0.5, 0.5, 0.1]])
def test_auroc_bootstrap_tiny_n_all_resamples(y, s):
    y, s = np.array(y), np.array(s)
    idx = np.array(np.meshgrid(*[range(3)] * 3)).reshape(3, -1).T  # all 27 resamples
    got = auroc_bootstrap(y, s, idx)
    one_class = np.array([y[row].min() == y[row].max() for row in idx])
    assert one_class.any() and np.all(np.isnan(got[one_class]))  # convention: NaN
    np.testing.assert_allclose(got[~one_class], naive_auroc_loop(y, s, idx[~one_class]),
                               atol=1e-12, rtol=0)
    assert auroc_bootstrap(y, s, idx[:0]).shape == (0,)


def test_auprc_and_sens_bootstrap_binary_scores_and_blocks(monkeypatch) -> None:
    from sklearn.metrics import average_precision_score

    from medfail.metrics.bootstrap import auprc_bootstrap, sens_at_spec_bootstrap
    from medfail.metrics.classification import sens_at_spec

    rng = np.random.default_rng(3)
    n = 60
    y = (rng.random(n) < 0.7).astype(int)
    s = (rng.random(n) + 0.3 * y > 0.6).astype(float)  # two score levels
    idx = bootstrap_indices(n, 80, seed=1)
    monkeypatch.setattr(bs, "_BLOCK_ELEMS", 5 * n)
    ap, sens = auprc_bootstrap(y, s, idx), sens_at_spec_bootstrap(y, s, idx, 0.9)
    for b, row in enumerate(idx):
        yb, sb = y[row], s[row]
        if yb.min() == yb.max():
            continue
        assert ap[b] == pytest.approx(average_precision_score(yb, sb), abs=1e-12)
        assert sens[b] == pytest.approx(sens_at_spec(yb, sb, 0.9), abs=1e-12)
