"""Slices: GT features, membership rules, and slice aggregation with paired gap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfail.analysis.aggregate import aggregate_per_image
from medfail.slices.definitions import mask_slices, metadata_slices, slice_membership
from medfail.slices.features import mask_features


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_mask_features_on_hand_built_masks() -> None:
    ring = _disc((64, 64), 32, 32, 8) & ~_disc((64, 64), 32, 32, 4)
    f = mask_features(ring.astype(np.uint8), (0.5, 0.5))
    assert f["gt_area_px"] == ring.sum() and f["gt_area_mm2"] == pytest.approx(ring.sum() / 4)
    assert f["hollow"] == 1.0 and f["n_objects"] == 1.0
    assert f["centre_offset"] == pytest.approx(np.hypot(0.5, 0.5) / np.hypot(32, 32), abs=1e-9)
    two = (_disc((64, 64), 5, 5, 3) | _disc((64, 64), 50, 50, 3)).astype(np.uint8)
    g = mask_features(two, None)
    assert g["n_objects"] == 2.0 and g["hollow"] == 0.0 and np.isnan(g["gt_area_mm2"])
    corner = _disc((64, 64), 2, 2, 2).astype(np.uint8)
    assert mask_features(corner, None)["centre_offset"] > 0.8
    empty = mask_features(np.zeros((8, 8), np.uint8), None)
    assert empty["gt_area_px"] == 0 and np.isnan(empty["centre_offset"])


def test_mask_slices_rules() -> None:
    index = pd.DataFrame({
        "id": ["a", "b", "c", "d"], "gt_area_px": [10.0, 50.0, 0.0, 30.0],
        "gt_area_mm2": [np.nan] * 4, "n_objects": [1.0, 2.0, 0.0, 1.0],
        "hollow": [0.0, 1.0, 0.0, 0.0], "centre_offset": [0.1, 0.9, np.nan, 0.49]})
    m = mask_slices(index, ["size", "location", "shape"], None, "px")
    got = set(map(tuple, m.to_numpy()))
    # median of non-empty areas = 30: 10 is small, 30 and 50 are large
    assert {("a", "size=small"), ("d", "size=large"), ("b", "size=large"),
            ("c", "size=none")} <= got
    assert {("a", "location=central"), ("b", "location=peripheral"),
            ("d", "location=central")} <= got
    assert {("b", "shape=hollow"), ("b", "objects=2+"), ("a", "objects=1")} <= got
    assert not any(sid == "c" and not s.startswith("size") for sid, s in got)
    only_size = mask_slices(index, ["size"], 20.0, "px")
    assert set(only_size["slice"]) == {"size=small", "size=large", "size=none"}


def test_metadata_slices_categorical_and_few_level_numeric() -> None:
    meta = pd.DataFrame({"id": list("abcdefgh"), "site": list("AABBCCAB"),
                         "age": [30, 41, 52, 63, 74, 85, 26, 37],  # many levels: skipped
                         "grade": [1, 2, 1, 2, 1, 2, 1, 2],          # few levels: sliced
                         "constant": ["x"] * 8, "pixel_spacing": [0.7] * 4 + [1.4] * 4})
    s = metadata_slices(meta)
    assert set(s["slice"]) == {"site=A", "site=B", "site=C", "grade=1", "grade=2"}
    assert len(s[s["slice"] == "site=A"]) == 3


def test_slice_aggregation_values_gaps_and_flags() -> None:
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(40)]
    member = np.array([i < 8 for i in range(40)])  # 8 samples in the slice
    values = np.where(member, 0.5, 0.9) + rng.normal(0, 0.01, 40)
    rows = [{"id": sid, "condition": "clean", "target": "lesion", "metric": "dice",
             "value": v} for sid, v in zip(ids, values, strict=True)]
    ps = pd.DataFrame(rows)
    conditions = pd.DataFrame([{"condition": "clean", "test": "clean", "family": "clean",
                                "severity": 0}])
    membership = pd.DataFrame({"id": [i for i, m in zip(ids, member, strict=True) if m],
                               "slice": "size=small"})
    out = aggregate_per_image(ps, conditions, 200, 0, membership=membership, min_slice_n=10)
    whole = out[out["slice"] == "all"].iloc[0]
    small = out[out["slice"] == "size=small"].iloc[0]
    assert small["value"] == pytest.approx(values[member].mean())
    assert whole["value"] == pytest.approx(values.mean())
    assert small["gap_vs_all"] == pytest.approx(small["value"] - whole["value"])
    assert small["gap_ci_high"] < 0  # clearly worse than the whole set
    assert small["n"] == 8 and bool(small["small_slice"])  # 8 < 10: flagged, not hidden
    assert not bool(whole["small_slice"])


def test_slice_membership_combines_kinds() -> None:
    index = pd.DataFrame({"id": ["a", "b"], "gt_area_px": [5.0, 9.0],
                          "gt_area_mm2": [np.nan] * 2, "n_objects": [1.0, 1.0],
                          "hollow": [0.0, 0.0], "centre_offset": [0.2, 0.7]})
    meta = pd.DataFrame({"site": ["A", "B"]}, index=pd.Index(["a", "b"], name="id"))
    m = slice_membership(index, meta, ["size", "metadata"], None, "px")
    assert set(m["slice"]) == {"size=small", "size=large", "site=A", "site=B"}
