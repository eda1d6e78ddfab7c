"""Slice discovery (issue 16): SliceLine on one half, confirmation on the other, embedding groups.

References: the ``sliceline`` package called directly, scikit-learn's ``log_loss``, scipy's
``bootstrap``; a planted conjunction is found and confirmed, shuffled errors are not (over 30
seeds), and confirm-half errors never move a sample's group.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import log_loss

from medfail.analysis import discovery as dv


def synthetic(n: int = 96, seed: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"s{i:03d}" for i in range(n)], name="id")
    x = pd.DataFrame({f"f{j}": rng.choice(["a", "b", "c"][: 2 + j % 2], n) for j in range(12)},
                     index=ids)
    return x, pd.Series(rng.gamma(1.0, 0.3, n), index=ids)


def test_halves_are_seeded_balanced_and_order_free() -> None:
    ids = [f"x{i}" for i in range(11)]
    h = dv.split_halves(ids, 3)
    assert (h == dv.DISCOVER).sum() == 6 and (h == dv.CONFIRM).sum() == 5
    pd.testing.assert_series_equal(h, dv.split_halves(list(reversed(ids)), 3))
    assert not h.equals(dv.split_halves(ids, 4))


def test_planted_conjunction_is_found_and_confirmed() -> None:
    x, e = synthetic()
    planted = (x["f0"] == "a") & (x["f3"] == "b")
    e = e + 0.8 * planted
    found = dv.discover(x, e, dv.split_halves(list(x.index), 0), 500, 0)
    top = found[found["confirmed"]]
    assert "f0=a & f3=b" in set(top["slice"])
    row = top.set_index("slice").loc["f0=a & f3=b"]
    assert row["ci_low"] > 0 and row["n_predicates"] == 2
    assert row["ci_level"] == pytest.approx(1 - 0.05 / len(found))


def test_shuffled_errors_rarely_confirm_anything() -> None:
    """No effect (errors permuted against the features): the Bonferroni-confirmed family keeps
    false discoveries rare; 30 seeds, expected about 1.5, asserted at most 8."""
    x, base = synthetic()
    hits = 0
    for seed in range(30):
        e = pd.Series(np.random.default_rng(seed).permutation(base.to_numpy()), index=x.index)
        hits += bool(dv.discover(x, e, dv.split_halves(list(x.index), seed), 200, seed)
                     ["confirmed"].any())
    assert hits <= 8


def test_sliceline_candidates_match_the_package() -> None:
    from sliceline import Slicefinder

    x, e = synthetic(60, 2)
    ours = dv.sliceline_candidates(x, e.to_numpy(), k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Slicefinder(alpha=dv.ALPHA, k=4, max_l=dv.MAX_LEVEL, min_sup=6,
                          verbose=False).fit(x.to_numpy(dtype=object), e.to_numpy())
    assert len(ours) == min(4, len(ref.top_slices_))
    for (preds, score), row, st in zip(ours, ref.top_slices_, ref.top_slices_statistics_,
                                       strict=False):
        assert preds == {c: v for c, v in zip(x.columns, row, strict=True) if v is not None}
        assert score == pytest.approx(st["slice_score"])


def test_no_candidates_on_constant_errors_or_no_features() -> None:
    x, e = synthetic(40)
    assert dv.sliceline_candidates(x, np.zeros(40)) == []
    assert dv.sliceline_candidates(x.iloc[:, :0], e.to_numpy()) == []
    found = dv.discover(x.iloc[:, :0], e, dv.split_halves(list(x.index), 0), 50, 0)
    assert list(found.columns) == dv.COLUMNS and found.empty


def test_gap_interval_against_scipy_bootstrap() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 50)
    gap, lo, hi = dv.gap_interval(a, b, 4000, 0.95, 1)
    assert gap == pytest.approx(a.mean() - b.mean())
    ref = stats.bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
                          n_resamples=4000, confidence_level=0.95, method="percentile",
                          rng=np.random.default_rng(2), vectorized=True)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.08)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.08)


def test_classification_errors_are_sklearn_log_loss() -> None:
    rng = np.random.default_rng(0)
    ids, targets = [f"i{k}" for k in range(20)], ["a", "b", "c"]
    p = rng.uniform(0.01, 0.99, (20, 3))
    y = rng.integers(0, 2, (20, 3))
    long = pd.DataFrame([{"id": i, "target": t, "prob": p[r, k], "label": y[r, k]}
                         for r, i in enumerate(ids) for k, t in enumerate(targets)])
    ours = dv.classification_errors(long, multi_label=True)
    for r, i in enumerate(ids):
        ref = np.mean([log_loss([y[r, k]], [p[r, k]], labels=[0, 1]) for k in range(3)])
        assert ours[i] == pytest.approx(ref)
    soft = p / p.sum(1, keepdims=True)
    cls = rng.integers(0, 3, 20)
    onehot = pd.DataFrame([{"id": i, "target": t, "prob": soft[r, k], "label": int(cls[r] == k)}
                           for r, i in enumerate(ids) for k, t in enumerate(targets)])
    ours = dv.classification_errors(onehot, multi_label=False)
    for r, i in enumerate(ids):
        assert ours[i] == pytest.approx(log_loss([cls[r]], soft[r:r + 1], labels=[0, 1, 2]))


def test_segmentation_errors_are_one_minus_mean_dice() -> None:
    rows = pd.DataFrame({"id": ["a", "a", "b", "a"], "condition": ["clean"] * 3 + ["x@1"],
                         "metric": ["dice"] * 4, "target": ["t1", "t2", "t1", "t1"],
                         "value": [0.8, 0.6, 1.0, 0.0]})
    e = dv.segmentation_errors(rows)
    assert e["a"] == pytest.approx(0.3) and e["b"] == pytest.approx(0.0)


def test_embedding_groups_ignore_confirm_half_errors() -> None:
    rng = np.random.default_rng(0)
    n = 80
    ids = [f"s{i}" for i in range(n)]
    emb = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(4, 1, (40, 6))])
    err = pd.Series(np.r_[np.full(40, 0.1), np.full(40, 0.9)] + rng.uniform(0, .05, n),
                    index=ids)
    halves = dv.split_halves(ids, 0)
    g = dv.embedding_groups(ids, emb, err, halves, 0)
    assert g is not None and g.k >= 2
    changed = err.copy()
    changed[halves[halves == dv.CONFIRM].index] = rng.uniform(0, 5, (halves == dv.CONFIRM).sum())
    g2 = dv.embedding_groups(ids, emb, changed, halves, 0)
    assert g2 is not None
    pd.testing.assert_series_equal(g.group, g2.group)
    # the two embedding clusters never share a group
    first, second = set(g.group.iloc[:40]), set(g.group.iloc[40:])
    assert not first & second
    assert dv.embedding_groups(ids[:10], emb[:10], err[:10], halves[:10], 0) is None


def test_tertiles_and_slice_columns() -> None:
    t = dv.tertiles(pd.Series([1, 2, 3, 4, 5, 6, np.nan]))
    assert list(t) == ["low", "low", "mid", "mid", "high", "high", dv.MISSING]
    assert set(dv.tertiles(pd.Series([2.0] * 5))) == {"mid"}
    m = pd.DataFrame({"id": ["a", "b", "a", "b", "a"],
                      "slice": ["gt.size=small", "gt.size=large", "meta.site=A", "meta.site=B",
                                "all"]})
    wide = dv.slice_columns(m)
    assert wide.loc["a", "gt.size"] == "small" and wide.loc["b", "meta.site"] == "B"


def test_feature_table_drops_constant_columns_and_fills_missing() -> None:
    m = pd.DataFrame({"id": ["a", "b", "c"], "slice": ["meta.site=A", "meta.site=B",
                                                       "gt.size=none"]})
    f = dv.feature_table(m, None, pd.Series([0.1, 0.5, 0.9], index=["a", "b", "c"]), None,
                         None, ["a", "b", "c"])
    assert f.loc["c", "meta.site"] == dv.MISSING and "gt.size" in f and "conf.level" in f
    assert f.loc["a", "conf.level"] == "low"
