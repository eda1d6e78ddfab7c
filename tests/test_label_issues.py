"""Label-issue detection with cleanlab (medfail.analysis.label_issues)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from cleanlab.segmentation import filter as seg_filter
from cleanlab.segmentation import rank as seg_rank

from medfail.analysis.label_issues import (
    CLS_COLUMNS,
    SEG_COLUMNS,
    classification_label_issues,
    recovery,
    segmentation_label_issues,
    segmentation_pred_probs,
)


def _multi_label(n: int, targets: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t in targets:
        p = rng.uniform(size=n)
        y = (rng.uniform(size=n) < p).astype(int)
        rows += [{"id": f"c{i:03d}", "target": t, "prob": p[i], "label": y[i], "condition": "x"}
                 for i in range(n)]
    return pd.DataFrame(rows)


def _multi_class(n: int, targets: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(len(targets)), size=n)
    y = np.array([rng.choice(len(targets), p=row) for row in p])
    return pd.DataFrame([{"id": f"c{i:03d}", "target": t, "prob": p[i, k], "label": int(y[i] == k)}
                         for i in range(n) for k, t in enumerate(targets)])


def _direct(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (get_label_quality_scores(labels, pred_probs),
                find_label_issues(labels, pred_probs))


def test_multi_label_equals_direct_cleanlab():
    preds = _multi_label(120, ["a", "b"], seed=0)
    out = classification_label_issues(preds, multi_label=True)
    assert list(out.columns) == CLS_COLUMNS
    assert len(out) == 240
    for t, sub in preds.groupby("target"):
        sub = sub.sort_values("id")
        p = sub["prob"].to_numpy()
        y = sub["label"].to_numpy()
        quality, issue = _direct(y, np.column_stack([1 - p, p]))
        got = out[out["target"] == t].set_index("id").loc[sub["id"]]
        np.testing.assert_allclose(got["quality"], quality)
        np.testing.assert_array_equal(got["issue"], issue)
        np.testing.assert_array_equal(got["given_label"], y)
        np.testing.assert_allclose(got["prob"], p)
    assert out["issue"].any()


def test_multi_class_equals_direct_cleanlab():
    targets = ["x", "y", "z"]
    preds = _multi_class(150, targets, seed=1)
    out = classification_label_issues(preds, multi_label=False)
    assert len(out) == 150 and set(out["given_label"]) == {1}
    wide_p = preds.pivot(index="id", columns="target", values="prob")[targets].to_numpy()
    wide_y = preds.pivot(index="id", columns="target", values="label")[targets].to_numpy()
    y = wide_y.argmax(axis=1)
    wide_p = wide_p / wide_p.sum(axis=1, keepdims=True)
    quality, issue = _direct(y, wide_p)
    got = out.set_index("id").sort_index()
    np.testing.assert_allclose(got["quality"], quality)
    np.testing.assert_array_equal(got["issue"], issue)
    np.testing.assert_array_equal(got["target"], np.asarray(targets)[y])
    np.testing.assert_allclose(got["prob"], wide_p[np.arange(150), y])
    assert out["issue"].any()


def test_rank_sorted_by_quality_then_id_and_target():
    preds = _multi_label(30, ["b", "a"], seed=2)
    preds.loc[preds["id"].isin(["c003", "c001"]), "prob"] = 0.5  # ties at quality 0.5
    out = classification_label_issues(preds, multi_label=True)
    assert out["rank"].tolist() == list(range(1, len(out) + 1))
    assert out["quality"].is_monotonic_increasing
    keys = list(zip(out["quality"], out["id"], out["target"], strict=True))
    assert keys == sorted(keys)


def _separated(n: int, seed: int, flips: int) -> tuple[pd.DataFrame, set[tuple[str, str]]]:
    """Two targets, probabilities 0.95 ± 0.01 for positives, 0.05 ± 0.01 for negatives; in
    target ``a`` the labels of ``flips / 2`` positives and ``flips / 2`` negatives flipped.

    cleanlab counts a case labelled 0 as a likely 1 when p ≥ the mean p of the cases labelled
    1 (and vice versa): the flipped-in cases pull each mean down by ≈ 0.9·(flips/2)/(n/2) =
    0.036, well beyond the ± 0.01 spread. Flipping one way only leaves that mean at 0.95 and
    about half the flipped cases under it, unflagged (though ranked first)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], set()
    for t in ("a", "b"):
        y = np.zeros(n, dtype=int)
        y[rng.choice(n, size=n // 2, replace=False)] = 1
        p = np.where(y == 1, 0.95, 0.05) + rng.uniform(-0.01, 0.01, size=n)
        given = y.copy()
        if t == "a":
            flipped = np.concatenate([rng.choice(np.flatnonzero(y == c), flips // 2,
                                                 replace=False) for c in (0, 1)])
            given[flipped] = 1 - y[flipped]
            truth = {(f"c{i:03d}", t) for i in flipped}
        rows += [{"id": f"c{i:03d}", "target": t, "prob": p[i], "label": int(given[i])}
                 for i in range(n)]
    return pd.DataFrame(rows), truth


def test_recovery_multi_label():
    preds, truth = _separated(200, seed=3, flips=8)
    out = classification_label_issues(preds, multi_label=True)
    r = recovery(out, truth)
    assert r["n_true"] == 8 and r["recall"] == 1.0 and r["precision"] >= 0.5
    assert r["n_recovered"] == 8 and r["n_flagged"] == out["issue"].sum()
    # the flipped pairs are the least plausible labels
    assert set(zip(out["id"][:8], out["target"][:8], strict=True)) == truth


def test_recovery_multi_class():
    """3 classes, p = 0.9 on the true class (spread < 0.01 after renormalisation); 3, 3 and 2
    cases of classes 0, 1, 2 given the next class, so every class receives flipped cases that
    pull its confident threshold (the mean p of its given cases) ≈ 0.03 below the spread
    (:func:`_separated`)."""
    rng = np.random.default_rng(4)
    targets = ["x", "y", "z"]
    n = 150
    y = rng.permutation(np.arange(n) % 3)
    p = np.full((n, 3), 0.05) + rng.uniform(0, 0.005, size=(n, 3))
    p[np.arange(n), y] = 0.9
    p /= p.sum(axis=1, keepdims=True)
    given = y.copy()
    flipped = np.concatenate([rng.choice(np.flatnonzero(y == c), m, replace=False)
                              for c, m in enumerate((3, 3, 2))])
    given[flipped] = (y[flipped] + 1) % 3
    preds = pd.DataFrame([{"id": f"c{i:03d}", "target": t, "prob": p[i, k],
                           "label": int(given[i] == k)}
                          for i in range(n) for k, t in enumerate(targets)])
    out = classification_label_issues(preds, multi_label=False)
    truth = {(f"c{i:03d}", targets[given[i]]) for i in flipped}
    r = recovery(out, truth)
    assert r["recall"] == 1.0 and r["precision"] >= 0.5
    assert set(zip(out["id"][:8], out["target"][:8], strict=True)) == truth


def test_recovery_nothing_flagged():
    found = pd.DataFrame({"id": ["a"], "target": ["t"], "issue": [False]})
    r = recovery(found, [("a", "t")])
    assert np.isnan(r["precision"]) and r["recall"] == 0.0 and r["n_flagged"] == 0
    assert np.isnan(recovery(found, [])["recall"])


@pytest.mark.parametrize("positives", [0, 1])
def test_one_class_target_flags_nothing(positives):
    preds = _multi_label(40, ["a", "b"], seed=5)
    a = preds["target"] == "a"
    preds.loc[a, "label"] = 0
    preds.loc[a & (preds["id"] == "c000"), "label"] = positives
    preds.loc[a, "prob"] = np.linspace(0.01, 0.99, 40)  # many confident "wrong" labels
    out = classification_label_issues(preds, multi_label=True)
    sub = out[out["target"] == "a"].set_index("id").sort_index()
    assert not sub["issue"].any()
    p, y = sub["prob"].to_numpy(), sub["given_label"].to_numpy()
    np.testing.assert_allclose(sub["quality"], np.where(y == 1, p, 1 - p))


def test_multi_class_single_given_class_flags_nothing():
    preds = _multi_class(30, ["x", "y"], seed=6)
    preds["label"] = (preds["target"] == "x").astype(int)
    out = classification_label_issues(preds, multi_label=False)
    assert len(out) == 30 and not out["issue"].any() and set(out["target"]) == {"x"}


@pytest.mark.parametrize("multi_label", [True, False])
def test_empty_input(multi_label):
    empty = pd.DataFrame(columns=["id", "target", "prob", "label"])
    out = classification_label_issues(empty, multi_label=multi_label)
    assert out.empty and list(out.columns) == CLS_COLUMNS
    assert recovery(out, [])["n_flagged"] == 0
    seg = segmentation_label_issues({}, {})
    assert seg.empty and list(seg.columns) == SEG_COLUMNS


def _disc(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius**2


def _seg_set(n: int, seed: int, shape: tuple[int, ...] = (24, 24)
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A lesion (class 1) per image; the model is right: p = 0.9 ± 0.05 inside, 0.05 outside."""
    rng = np.random.default_rng(seed)
    probs, masks = {}, {}
    for i in range(n):
        centre = tuple(int(rng.integers(5, s - 5)) for s in shape)
        lesion = _disc(shape, centre, 4)
        fg = np.where(lesion, 0.9, 0.05) + rng.uniform(-0.04, 0.04, size=shape)
        probs[f"im{i}"] = fg[None].astype(np.float16)
        masks[f"im{i}"] = lesion.astype(np.uint8)
    return probs, masks


@pytest.mark.parametrize("error", ["erased", "shifted"])
def test_wrong_mask_ranks_first(error):
    probs, masks = _seg_set(8, seed=7)
    bad = masks["im3"]
    masks["im3"] = np.zeros_like(bad) if error == "erased" else np.roll(bad, 8, axis=1)
    out = segmentation_label_issues(probs, masks)
    assert list(out.columns) == SEG_COLUMNS
    assert out["id"].iloc[0] == "im3" and out["rank"].iloc[0] == 1
    assert out["issue"].iloc[0] and out["n_issue_pixels"].iloc[0] >= 5
    assert not out["issue"].iloc[1:].any()
    assert out["quality"].iloc[0] < 0.5 < out["quality"].iloc[1]


def test_per_image_equals_batched_cleanlab():
    rng = np.random.default_rng(8)
    n, k, h, w = 6, 3, 16, 16
    fg = rng.dirichlet(np.ones(k), size=(n, h, w)).astype(np.float32)[..., 1:]
    probs = {f"im{i}": np.moveaxis(fg[i], -1, 0) for i in range(n)}
    masks = {f"im{i}": rng.integers(0, k, size=(h, w)) for i in range(n)}
    # the model agrees with the mask on most pixels, so the flags are a minority
    for i in range(n):
        agree = rng.uniform(size=(h, w)) < 0.8
        pred = segmentation_pred_probs(probs[f"im{i}"]).argmax(axis=0)
        masks[f"im{i}"] = np.where(agree, pred, masks[f"im{i}"])
    out = segmentation_label_issues(probs, masks).set_index("id").loc[list(probs)]
    pred_probs = np.stack([segmentation_pred_probs(probs[key]) for key in probs])
    labels = np.stack([masks[key] for key in probs])
    scores, _ = seg_rank.get_label_quality_scores(labels, pred_probs, verbose=False)
    np.testing.assert_array_equal(out["quality"].to_numpy(), scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = seg_filter.find_label_issues(labels, pred_probs, n_jobs=1, verbose=False)
    np.testing.assert_array_equal(out["n_issue_pixels"].to_numpy(), issues.sum(axis=(1, 2)))
    assert 0 < issues.sum() < issues.size / 4


def test_volumes_and_sizes_accepted():
    probs, masks = _seg_set(4, seed=9, shape=(16, 16, 12))
    p2, m2 = _seg_set(3, seed=10, shape=(20, 28))  # 2D images of another size alongside
    probs.update({f"2d{k}": v for k, v in p2.items()})
    masks.update({f"2d{k}": v for k, v in m2.items()})
    masks["im1"] = np.zeros_like(masks["im1"])
    out = segmentation_label_issues(probs, masks)
    assert len(out) == 7 and out["id"].iloc[0] == "im1"
    with pytest.raises(ValueError, match="mask shape"):
        segmentation_label_issues({"a": probs["im0"]}, {"a": masks["im0"][:, :, :5]})


def test_background_is_one_minus_foreground():
    fg = np.array([[[0.2, 0.7]], [[0.3, 0.6]]], dtype=np.float16)  # (2, 1, 2)
    p = segmentation_pred_probs(fg)
    assert p.dtype == np.float32 and p.shape == (3, 1, 2)
    np.testing.assert_allclose(p[:, 0, 0], [0.5, 0.2, 0.3], atol=1e-3)
    np.testing.assert_allclose(p[:, 0, 1], [0.0, 0.7 / 1.3, 0.6 / 1.3], atol=1e-3)
