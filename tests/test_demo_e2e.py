"""End to end on the embedded phantoms: train the three baselines, run all five families, and
check that the analysis recovers the effects the phantoms plant (slow: trains three models).

The trained models differ with torch's thread count (float reductions in another order), so each
statistical assertion rests on an effect with a margin measured on models trained with 1 and 2
threads (2026-12, phantoms with site B noise 0.14, site C contrast 0.6, site D noise 0.08 and
contrast 0.5; the marker and flip rows and site C's: 2026-12-02, phantoms with the marker
shortcut). Observed value at 1 / 2 threads -> asserted limit:

==========================================================  ===============  ==========
site C clean macro AUROC below site A                        0.212 / 0.105    > 0.08
site B Dice drop under gaussian_noise@3 minus site A's       0.126 / 0.140    > 0.05
gt.size=small Dice gap CI high under gaussian_blur@3         -0.270 / -0.267  < -0.10
large minus small lesion sensitivity under gaussian_blur@3   0.217 / 0.200    > 0.10
gt.shape=hollow Dice gap CI high under gaussian_blur@3       -0.316 / -0.307  < -0.10
shift_data Δ CI high: classification AUROC / segmentation    -0.093 / -0.177  < 0
Dice                                                         -0.162 / -0.091  < 0
box_shift@3 Δ Dice CI high (promptable)                      -0.088 / -0.087  < 0
unnamed marker: held-out marker share of the best confirmed   1.00 / 1.00      >= 0.8
effusion slice (issue 16)
flipped calibration labels flagged by cleanlab (recall)      1.00 / 1.00      >= 0.5
==========================================================  ===============  ==========

Claims whose significance did not hold at both thread counts (site C's gap to the whole set,
+0.009 with the old phantoms; site B's gap to the whole set under noise, +0.036 / +0.012) are
stated as the margins above instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfail.analysis.discovery import CONFIRM, members, parse_slice
from medfail.analysis.label_issues import recovery
from medfail.demo import IMAGE_TASKS, run_demo
from medfail.engine.suite import SuiteConfig


def _row(metrics: pd.DataFrame, condition: str, slice_: str, metric: str,
         target: str) -> pd.Series:
    sel = metrics[(metrics["condition"] == condition) & (metrics["slice"] == slice_)
                  & (metrics["metric"] == metric) & (metrics["target"] == target)]
    assert len(sel) == 1, (condition, slice_, metric, target)
    return sel.iloc[0]


@pytest.mark.slow
def test_demo_recovers_the_planted_weaknesses(tmp_path: Path) -> None:
    suite = SuiteConfig(tests=None, severities=[3], n_bootstrap=500)
    reports = run_demo(tmp_path, IMAGE_TASKS, suite=suite, progress=False)
    assert set(reports) == {"classification", "segmentation", "promptable"}
    for task, report in reports.items():
        assert report.exists(), task
        assert "The model fails most" in report.read_text()

    cls = pd.read_parquet(tmp_path / "classification" / "metrics.parquet")
    seg = pd.read_parquet(tmp_path / "segmentation" / "metrics.parquet")
    prm = pd.read_parquet(tmp_path / "promptable" / "metrics.parquet")
    # all five families are exercised
    assert {"corruption", "domain_shift"} <= set(seg["family"])
    assert "prompt" in set(prm["family"])
    assert {"gt.size=small", "meta.location=peripheral", "gt.shape=hollow",
            "meta.site=B"} <= set(seg["slice"])

    # planted: the low-resolution, low-contrast site C is the hardest site for the classifier
    site_auroc = {site: _row(cls, "clean", f"meta.site={site}", "auroc", "macro")["value"]
                  for site in "ABC"}
    assert min(site_auroc, key=site_auroc.get) == "C"
    assert site_auroc["A"] - site_auroc["C"] > 0.08, site_auroc
    # planted: small lesions vanish first under blur (missed lesions, not just lower Dice)
    small = _row(seg, "gaussian_blur@3", "gt.size=small", "lesion_sensitivity", "lesion")
    large = _row(seg, "gaussian_blur@3", "gt.size=large", "lesion_sensitivity", "lesion")
    assert large["value"] - small["value"] > 0.1
    assert _row(seg, "gaussian_blur@3", "gt.size=small", "dice", "lesion")["gap_ci_high"] < -0.1
    # planted: ring-shaped (hollow) masks lose more Dice under blur
    assert _row(seg, "gaussian_blur@3", "gt.shape=hollow", "dice", "lesion")["gap_ci_high"] < -0.1
    # planted: the noisy low-dose site B loses more Dice under extra noise than standard site A
    drop = {site: _row(seg, "clean", f"meta.site={site}", "dice", "lesion")["value"]
            - _row(seg, "gaussian_noise@3", f"meta.site={site}", "dice", "lesion")["value"]
            for site in "AB"}
    assert drop["B"] - drop["A"] > 0.05, drop
    # planted: an unseen vendor (site D) is a real domain shift for every task
    for metrics, metric, target in ((cls, "auroc", "macro"), (seg, "dice", "lesion")):
        assert _row(metrics, "shift_data", "all", metric, target)["delta_ci_high"] < 0
    # prompts: a box shifted by half its size hurts the promptable model
    assert _row(prm, "box_shift@3", "all", "dice", "lesion")["delta_ci_high"] < 0

    # planted and unnamed (issue 16): the marker shortcut is found on one half and confirmed
    # on the other (phantoms' answer key: data/planted.json), and cleanlab flags the flipped
    # calibration labels
    key = json.loads((tmp_path / "data" / "planted.json").read_text())
    marker = set(key["marker"]["test"])
    found = pd.read_parquet(tmp_path / "classification" / "discovery.parquet")
    feats = pd.read_parquet(tmp_path / "classification" / "discovery_features.parquet")
    held = feats[feats["half"] == CONFIRM].set_index("id")
    shares = [float(np.mean([i in marker for i in held.index[members(held, parse_slice(s))]]))
              for s in found[found["confirmed"] & (found["target"] == "effusion")]["slice"]]
    assert max(shares, default=0.0) >= 0.8, found
    issues = pd.read_parquet(tmp_path / "classification" / "label_issues.parquet")
    flips = recovery(issues, [(f["id"], f["target"]) for f in key["label_flips"]])
    assert flips["recall"] >= 0.5, flips
    assert (tmp_path / "segmentation" / "predictions" / "embeddings.npz").exists()

    ranking = pd.read_parquet(tmp_path / "segmentation" / "ranking.parquet")
    assert ranking["significant"].iloc[0] and ranking["kind"].iloc[0] == "condition"
    run = json.loads((tmp_path / "classification" / "run.json").read_text())
    assert set(run["thresholds"]) == {"nodule", "cavity", "effusion"}  # chosen on calibration

    # uncertainty and mitigations (issue 4 parts): stored TTA/MC conditions, temperature on the
    # calibration split, mitigations measured on the top breaking condition
    cal = pd.read_parquet(tmp_path / "classification" / "calibration.parquet")
    clean = cal[(cal["condition"] == "clean") & (cal["target"] == "macro")]
    nll = clean[clean["metric"] == "nll"].set_index("method")["value"]
    assert nll["temperature"] <= nll["max_prob"] + 1e-9
    assert {"tta", "mc_dropout"} <= set(cls["condition"]) and {"tta", "mc_dropout"} <= set(
        seg["condition"])
    mit = pd.read_parquet(tmp_path / "segmentation" / "mitigations.parquet")
    assert {"tta", "morphology", "selective_80"} <= set(mit["mitigation"])
    html = (tmp_path / "segmentation" / "report.html").read_text()
    assert "4 Uncertainty and calibration" in html and "5 Mitigations" in html
    for task in ("classification", "segmentation", "promptable"):  # both forms, every task
        assert (tmp_path / task / "report.pdf").stat().st_size > 50_000
        assert len(json.loads((tmp_path / task / "cases" / "cases.json").read_text())) >= 1

    # a second demo reuses the trained baselines
    run_demo(tmp_path, IMAGE_TASKS, suite=suite, progress=False)
    run = json.loads((tmp_path / "segmentation" / "run.json").read_text())
    assert run["model"]["training_cached"] is True
