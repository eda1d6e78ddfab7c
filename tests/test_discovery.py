"""Slice discovery (issue 16): SliceLine on one half, confirmation on the other, embedding groups.

References: the ``sliceline`` package called directly, scikit-learn's ``zero_one_loss``, scipy's
``bootstrap``; a planted conjunction is found and confirmed, shuffled errors are not (over 30
seeds), and confirm-half errors never move a sample's group.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import zero_one_loss

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


def test_each_target_is_searched_alone_and_confirmed_in_one_family() -> None:
    """An effect on one target's error, invisible in the mean over five noisy targets, is
    found under that target; every candidate shares one Bonferroni level."""
    x, e = synthetic()
    rng = np.random.default_rng(5)
    errors = pd.DataFrame({f"t{k}": rng.gamma(1.0, 0.6, len(x)) for k in range(5)},
                          index=x.index)
    errors["t2"] = e + 0.8 * ((x["f1"] == "b") & (x["f4"] == "a"))
    found = dv.discover(x, errors, dv.split_halves(list(x.index), 0), 500, 0)
    assert set(found["target"]) <= set(errors.columns)
    assert found["ci_level"].nunique() == 1
    assert found["ci_level"].iloc[0] == pytest.approx(1 - 0.05 / len(found))
    hit = found[found["confirmed"] & (found["target"] == "t2")]
    assert "f1=b & f4=a" in set(hit["slice"])
    assert not found[found["confirmed"] & (found["target"] != "t2")]["slice"].eq(
        "f1=b & f4=a").any()


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


def test_classification_errors_are_per_target_misclassification() -> None:
    """Multi-label: 1[(p ≥ τ_t) ≠ y] per target (sklearn's zero_one_loss per target counts the
    same); multi-class: argmax ≠ true class."""
    rng = np.random.default_rng(0)
    ids, targets = [f"i{k}" for k in range(30)], ["a", "b", "c"]
    p = rng.uniform(0.01, 0.99, (30, 3))
    y = rng.integers(0, 2, (30, 3))
    tau = {"a": 0.5, "b": 0.3, "c": 0.8}
    long = pd.DataFrame([{"id": i, "target": t, "prob": p[r, k], "label": y[r, k]}
                         for r, i in enumerate(ids) for k, t in enumerate(targets)])
    ours = dv.classification_errors(long, True, tau)
    assert list(ours.columns) == targets and set(np.unique(ours.to_numpy())) <= {0.0, 1.0}
    for k, t in enumerate(targets):
        ref = zero_one_loss(y[:, k], (p[:, k] >= tau[t]).astype(int), normalize=False)
        assert ours[t].sum() == ref
        assert ours.loc["i3", t] == float((p[3, k] >= tau[t]) != y[3, k])
    soft = p / p.sum(1, keepdims=True)
    cls = rng.integers(0, 3, 30)
    onehot = pd.DataFrame([{"id": i, "target": t, "prob": soft[r, k], "label": int(cls[r] == k)}
                           for r, i in enumerate(ids) for k, t in enumerate(targets)])
    ours = dv.classification_errors(onehot, False, {})
    assert list(ours.columns) == [dv.ALL_TARGETS]
    assert ours[dv.ALL_TARGETS].sum() == zero_one_loss(cls, soft.argmax(1), normalize=False)


def test_segmentation_errors_are_one_minus_dice_per_target() -> None:
    rows = pd.DataFrame({"id": ["a", "a", "b", "a"], "condition": ["clean"] * 3 + ["x@1"],
                         "metric": ["dice"] * 4, "target": ["t1", "t2", "t1", "t1"],
                         "value": [0.8, 0.6, 1.0, 0.0]})
    e = dv.segmentation_errors(rows)
    assert e.loc["a", "t1"] == pytest.approx(0.2) and e.loc["a", "t2"] == pytest.approx(0.4)
    assert e.loc["b", "t1"] == pytest.approx(0.0) and np.isnan(e.loc["b", "t2"])


def test_embedding_groups_are_error_blind_and_follow_the_clusters() -> None:
    rng = np.random.default_rng(0)
    n = 80
    ids = [f"s{i}" for i in range(n)]
    emb = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(4, 1, (40, 6))])
    g = dv.embedding_groups(ids, emb, 0)
    assert g is not None and g.k == 2 and list(g.pcs.columns) == ["emb.pc1", "emb.pc2"]
    first, second = set(g.group.iloc[:40]), set(g.group.iloc[40:])
    assert len(first) == len(second) == 1 and not first & second
    pd.testing.assert_series_equal(g.group, dv.embedding_groups(ids, emb, 0).group)
    assert dv.embedding_groups(ids[:6], emb[:6], 0) is None
    assert dv.embedding_groups(ids, np.ones((n, 6)), 0) is None


def test_worst_cell_crosses_group_and_label() -> None:
    """SliceLine never extends a predicate whose own error is below average; the embedding
    candidate is the worst group × label cell instead (a shortcut's errors sit in one label
    value of one group)."""
    rng = np.random.default_rng(0)
    n = 96
    ids = pd.Index([f"s{i}" for i in range(n)], name="id")
    x = pd.DataFrame({"emb.group": rng.choice(["g1", "g2"], n),
                      "label.t": rng.choice(["0", "1"], n)}, index=ids)
    err = ((x["emb.group"] == "g2") & (x["label.t"] == "0")).to_numpy(float)
    cell = dv.worst_cell(x, err, np.ones(n, bool), ["emb.group", "label.t"])
    assert cell == {"emb.group": "g2", "label.t": "0"}
    found = dv.discover(x, pd.Series(err, index=ids, name="t"),
                        dv.split_halves(list(ids), 0), 200, 0)
    assert found[found["confirmed"]]["slice"].eq("emb.group=g2 & label.t=0").any()


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


def test_a_target_without_finite_errors_gives_no_candidate() -> None:
    x, e = synthetic(30)
    x["emb.group"] = np.where(np.arange(30) % 2, "g1", "g2")
    errors = pd.DataFrame({"none": np.nan, "some": e}, index=x.index)
    found = dv.discover(x, errors, dv.split_halves(list(x.index), 0), 50, 0)
    assert "none" not in set(found["target"])


def test_slice_names_round_trip_values_with_ampersands() -> None:
    preds = {"meta.scanner": "GE & Philips", "label.x": "1", "label": "a=b"}
    assert dv.parse_slice(dv.slice_name(preds)) == preds
    assert dv.unnamed(dv.slice_name({"meta.scanner": "GE & Philips"})) is False


def test_missing_thresholds_default_to_one_half() -> None:
    long = pd.DataFrame({"id": ["a", "b"], "target": ["t", "t"], "prob": [0.9, 0.4],
                         "label": [1, 1]})
    assert list(dv.classification_errors(long, True, {})["t"]) == [0.0, 1.0]
