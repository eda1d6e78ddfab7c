"""The 'what breaks the model' ranking and its clinician-readable sentence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfail.analysis.aggregate import COLUMNS
from medfail.analysis.ranking import breaking_sentence, breaking_table


def _row(condition: str, slice_: str, value: float, effect: float, ci: tuple[float, float],
         metric: str = "dice", small: bool = False) -> dict[str, object]:
    test, _, sev = condition.partition("@")
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(condition=condition, test=test, family="clean" if condition == "clean" else
               "corruption", severity=int(sev or 0), slice=slice_, target="lesion",
               metric=metric, value=value, n=50, small_slice=small)
    if slice_ == "all":
        row.update(delta_vs_clean=effect, delta_ci_low=ci[0], delta_ci_high=ci[1])
    else:
        row.update(gap_vs_all=effect, gap_ci_low=ci[0], gap_ci_high=ci[1])
    return row


def test_ranking_orders_by_effect_and_flags_significance() -> None:
    metrics = pd.DataFrame([
        _row("clean", "all", 0.9, 0.0, (0.0, 0.0)),
        _row("gaussian_noise@3", "all", 0.5, -0.4, (-0.5, -0.3)),
        _row("jpeg@1", "all", 0.89, -0.01, (-0.03, 0.01)),
        _row("clean", "meta.site=B", 0.7, -0.2, (-0.3, -0.1)),
        _row("clean", "gt.size=small", 0.6, -0.3, (-0.6, 0.05), small=True),
        _row("gaussian_noise@3", "meta.site=B", 0.1, -0.4, (-0.5, -0.3)),  # clean only
    ])
    r = breaking_table(metrics, "segmentation")
    assert r["name"].tolist() == ["gaussian_noise@3", "gt.size=small", "meta.site=B", "jpeg@1"]
    assert r["test"].tolist() == ["gaussian_noise", "gt.size", "meta.site", "jpeg"]
    assert r["significant"].tolist() == [True, False, True, False]
    assert r.loc[0, "reference"] == 0.9
    sentence = breaking_sentence(r)
    assert "gaussian noise (severity 3)" in sentence and "on metadata site: B" in sentence
    assert "size" not in sentence  # not significant: not named
    assert "1 stress conditions and 1 patient/lesion subgroups" in sentence


def test_gt_and_metadata_slices_of_one_name_read_apart() -> None:
    """A GT rule and a metadata column both called ``location`` stay two ranked slices, and the
    sentence says which is which (old code merged them into ``location=central``)."""
    metrics = pd.DataFrame([
        _row("clean", "all", 0.9, 0.0, (0.0, 0.0)),
        _row("clean", "gt.location=central", 0.6, -0.3, (-0.4, -0.2)),
        _row("clean", "meta.location=central", 0.7, -0.2, (-0.3, -0.1)),
    ])
    r = breaking_table(metrics, "segmentation")
    assert r["name"].tolist() == ["gt.location=central", "meta.location=central"]
    sentence = breaking_sentence(r)
    assert "on GT location: central (dice 0.90 → 0.60)" in sentence
    assert "on metadata location: central (dice 0.90 → 0.70)" in sentence


def test_lower_is_better_metric_ranks_increases_first() -> None:
    metrics = pd.DataFrame([
        _row("clean", "all", 3.0, 0.0, (0.0, 0.0), metric="hd95"),
        _row("gaussian_blur@3", "all", 9.0, 6.0, (4.0, 8.0), metric="hd95"),
        _row("jpeg@1", "all", 2.5, -0.5, (-1.0, 0.0), metric="hd95"),
    ])
    r = breaking_table(metrics, "segmentation", metric="hd95")
    assert r["name"].tolist() == ["gaussian_blur@3", "jpeg@1"]
    assert r["significant"].tolist() == [True, False]


def test_nothing_significant_sentence() -> None:
    metrics = pd.DataFrame([_row("clean", "all", 0.9, 0.0, (0.0, 0.0)),
                            _row("jpeg@1", "all", 0.89, -0.01, (-0.03, 0.01))])
    assert "No stress condition or slice lowered dice" in breaking_sentence(
        breaking_table(metrics, "segmentation"))
