"""Weak models must not break the report: every finite result renders (issue 10, item 7).

A coin-flip classifier on 15 images with a 5-image metadata slice gives percentile intervals
that exclude their own estimate, slices where a class is absent and NaN metrics; a random-weight
U-Net gives Dice near 0. The report is built from such runs, and each figure function is fed
adversarial frames (CI excluding the estimate, NaN, inf, empty, one row, all-equal values).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medfail.analysis.aggregate import COLUMNS
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.spec import ModelSpec
from medfail.report import figures as F
from medfail.report.html import render_report

CLASSES = ["c0", "c1", "c2"]
FAST = {"tests": ["gaussian_noise"], "severities": [2], "n_bootstrap": 50, "uncertainty": [],
        "mitigate": False}


def coin_flip_classifier() -> Classifier:
    """Multi-class scores unrelated to the labels: logits = corner pixels / 32, which the test
    filled from a seeded RNG (random outputs, reproducible)."""
    spec = ModelSpec(task="classification", target_names=CLASSES, input_size=(16, 16),
                     output="logits")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3] / 32.0

    return Classifier(spec, forward)


def random_unet(seed: int = 0) -> Segmenter:
    """A tiny random-weight conv net (never trained): a weak segmenter."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="logits")
    return Segmenter(spec, net)


def coin_flip_folder(root: Path, seed: int = 2, n: int = 15) -> Path:
    """15 images, labels c0/c1/c2 at random, metadata ``site`` with a 5-image slice ``s2``.

    seed 2: the 5-image slice's macro AUPRC interval excludes its estimate (found by a search;
    the old forest plot raised on it)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    logits = rng.integers(0, 256, (n, len(CLASSES)))
    (root / "images").mkdir(parents=True)
    for i in range(n):
        img = np.full((16, 16), 60, np.uint8)
        img[0, :3] = logits[i]
        Image.fromarray(img).save(root / "images" / f"img{i:02d}.png")
    ids = [f"img{i:02d}" for i in range(n)]
    pd.DataFrame({"id": ids, "label": [CLASSES[k] for k in labels]}).to_csv(
        root / "labels.csv", index=False)
    pd.DataFrame({"id": ids, "site": ["s1" if i % 3 else "s2" for i in range(n)]}).to_csv(
        root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def weak_cls_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weak_cls")
    data = coin_flip_folder(root / "data")
    ds = open_dataset(data, "classification", target_names=CLASSES)
    return run_suite(coin_flip_classifier(), ds, root / "run", SuiteConfig(**FAST),
                     progress=False)


def _excluding(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics["value"] < metrics["ci_low"] - 1e-12)
                   | (metrics["value"] > metrics["ci_high"] + 1e-12)]


def test_coin_flip_run_renders_and_flags_interval_excluding_estimate(weak_cls_run: Path) -> None:
    run = weak_cls_run
    assert (run / "report.html").exists() and (run / "report.pdf").stat().st_size > 10_000
    metrics = pd.read_parquet(run / "metrics.parquet")
    bad = _excluding(metrics)
    # the scenario: a 5-image slice whose interval excludes its estimate, kept as computed
    row = bad[(bad["slice"] == "meta.site=s2") & (bad["metric"] == "auprc")
              & (bad["target"] == "macro")]
    assert len(row) == 1 and row["n"].iloc[0] == 5
    assert row["value"].iloc[0] < row["ci_low"].iloc[0]
    html = (run / "report.html").read_text()
    assert "slices_auprc.png" in html
    assert "excludes its point estimate" in html  # footnote in the report
    cap = re.search(r"Figure \d+: auprc per slice \(clean\)[^<]*", html)
    assert cap and "meta.site=s2" in cap.group(0)


def test_report_command_recovers_after_figures_are_deleted(weak_cls_run: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(weak_cls_run, run)
    (run / "report.html").unlink()
    shutil.rmtree(run / "figures")
    assert render_report(run).exists()
    assert list((run / "figures").glob("slices_*.png"))


def test_report_renders_adversarial_metrics(weak_cls_run: Path, tmp_path: Path) -> None:
    """Doctored metrics.parquet: inf, NaN intervals and a clean interval above its estimate."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(weak_cls_run, run)
    m = pd.read_parquet(run / "metrics.parquet")
    macro = m["target"] == "macro"
    clean_auroc = macro & (m["condition"] == "clean") & (m["slice"] == "all") & (
        m["metric"] == "auroc")
    m.loc[clean_auroc, ["value", "ci_low", "ci_high"]] = [0.40, 0.45, 0.90]
    m.loc[macro & (m["slice"] == "meta.site=s1") & (m["metric"] == "auroc"), "value"] = np.inf
    m.loc[macro & (m["condition"] != "clean"), ["delta_vs_clean", "delta_ci_low",
                                                "delta_ci_high"]] = np.nan
    m.to_parquet(run / "metrics.parquet")
    html = render_report(run).read_text()
    problem = re.search(r'<section id="sec-problem">.*?</section>', html, re.S).group(0)
    assert "0.400 [0.450, 0.900]*" in problem
    appendix = re.search(r'<section id="sec-appendix-a".*?</section>', html, re.S).group(0)
    assert "[0.450, 0.900]*" in appendix and "Δ n/a n/a" in appendix
    note = re.search(r'<p class="meta" id="ci-note">(.*?)</p>', html, re.S).group(1)
    assert "auroc clean: 0.400 vs [0.450, 0.900]" in note


def test_random_weight_segmenter_renders(tmp_path: Path) -> None:
    from tests.conftest import write_png_folder

    data = write_png_folder(tmp_path / "data", "segmentation", n=12, size=24)
    run = run_suite(random_unet(), open_dataset(data, "segmentation"), tmp_path / "run",
                    SuiteConfig(**FAST), progress=False)
    metrics = pd.read_parquet(run / "metrics.parquet")
    clean = metrics[(metrics["condition"] == "clean") & (metrics["slice"] == "all")
                    & (metrics["metric"] == "dice")]
    assert clean["value"].iloc[0] < 0.5  # weak indeed
    assert (run / "report.html").exists() and (run / "report.pdf").exists()


# --- each figure function on adversarial frames ---------------------------------------------

def _frame(values: list[float], lo: list[float], hi: list[float],
           slices: list[str] | None = None, conditions: list[str] | None = None,
           family: str = "corruption") -> pd.DataFrame:
    n = len(values)
    slices = slices or ["all"] * n
    conditions = conditions or ["clean"] * n
    rows = []
    for v, a, b, sl, cond in zip(values, lo, hi, slices, conditions, strict=True):
        sev = int(cond.split("@")[1]) if "@" in cond else 0
        rows.append({"condition": cond, "test": cond.split("@")[0],
                     "family": family if sev else "clean", "severity": sev, "slice": sl,
                     "target": "macro", "metric": "auroc", "value": v, "sd": np.nan,
                     "ci_low": a, "ci_high": b, "delta_vs_clean": np.nan,
                     "delta_ci_low": np.nan, "delta_ci_high": np.nan, "gap_vs_all": np.nan,
                     "gap_ci_low": -0.2, "gap_ci_high": 0.1, "n": 5,
                     "small_slice": sl != "all"})
    return pd.DataFrame(rows, columns=COLUMNS)


NAN, INF = float("nan"), float("inf")
FOREST = {
    "ci_excludes_estimate": ([0.5, 0.494, 0.7], [0.4, 0.499, 0.3], [0.6, 0.926, 0.65]),
    "nan": ([0.5, NAN, 0.6], [0.4, NAN, NAN], [0.6, NAN, NAN]),
    "inf": ([0.5, INF, 0.6], [0.4, 0.3, -INF], [0.6, INF, 0.9]),
    "single_row": ([0.5, 0.4], [0.4, 0.3], [0.6, 0.5]),
    "all_equal": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "empty": ([], [], []),
}


def _png_ok(path: Path) -> bool:
    with Image.open(path) as im:
        return im.size[0] > 100 and im.size[1] > 50


@pytest.mark.parametrize("case", list(FOREST))
def test_slice_forest_plot_adversarial(case: str, tmp_path: Path) -> None:
    v, lo, hi = FOREST[case]
    slices = ["all", "meta.site=a", "meta.site=b"][:len(v)]
    path = F.slice_forest_plot(_frame(v, lo, hi, slices), "auroc", "macro", tmp_path / "f.png")
    assert _png_ok(path)


@pytest.mark.parametrize("case", list(FOREST))
def test_degradation_plot_adversarial(case: str, tmp_path: Path) -> None:
    v, lo, hi = FOREST[case]
    conds = ["clean", "gaussian_noise@1", "gaussian_noise@2"][:len(v)]
    path = F.degradation_plot(_frame(v, lo, hi, conditions=conds), "auroc", "macro",
                              tmp_path / "d.png", family="corruption")
    assert _png_ok(path)


@pytest.mark.parametrize("case", list(FOREST))
def test_prompt_sensitivity_plot_adversarial(case: str, tmp_path: Path) -> None:
    v, lo, hi = FOREST[case]
    conds = ["clean", "box_shift@1", "box_shift@2"][:len(v)]
    frame = _frame(v, lo, hi, conditions=conds, family="prompt")
    path = F.prompt_sensitivity_plot(frame, "auroc", "macro", tmp_path / "p.png")
    assert _png_ok(path)
    # the clean row missing (or an unknown test) is no reason to raise either
    F.prompt_sensitivity_plot(frame[frame["condition"] != "clean"].assign(
        test="not_a_test"), "auroc", "macro", tmp_path / "p2.png")


@pytest.mark.parametrize("case", list(FOREST))
def test_compare_plot_adversarial(case: str, tmp_path: Path) -> None:
    v, lo, hi = FOREST[case]
    table = pd.DataFrame({"condition": [f"c{i}" for i in range(len(v))], "delta": v,
                          "ci_low": lo, "ci_high": hi})
    assert _png_ok(F.compare_plot(table, "auroc", "macro", tmp_path / "c.png"))


def test_curve_figures_adversarial(tmp_path: Path) -> None:
    y = np.array([0.0, 1.0, 1.0, 0.0])
    probs = {"max_prob": np.array([0.2, NAN, 0.7, 0.4]), "temperature": np.array([])}
    assert _png_ok(F.reliability_plot(y, probs, tmp_path / "r.png", "t"))
    assert _png_ok(F.reliability_plot(np.array([]), {}, tmp_path / "r0.png", "t"))
    assert _png_ok(F.reliability_plot(np.ones(3), {"max_prob": np.full(3, 0.5)},
                                      tmp_path / "r1.png", "t"))
    curves = {"a": (np.array([0.5, 1.0, NAN]), np.array([INF, 0.2, 0.1])),
              "b": (np.array([]), np.array([]))}
    assert _png_ok(F.risk_coverage_plot(curves, tmp_path / "rc.png", "t"))
    assert _png_ok(F.risk_coverage_plot({}, tmp_path / "rc0.png", "t"))
    cal = pd.DataFrame({"metric": ["ece"] * 3, "target": ["macro"] * 3,
                        "family": ["clean", "corruption", "corruption"],
                        "method": ["max_prob"] * 3, "test": ["clean", "noise", "noise"],
                        "condition": ["clean", "noise@1", "noise@2"], "severity": [0, 1, 2],
                        "value": [0.1, INF, NAN]})
    assert _png_ok(F.calibration_drift_plot(cal, "ece", "macro", tmp_path / "cd.png"))
    assert _png_ok(F.calibration_drift_plot(cal.iloc[:0], "ece", "macro", tmp_path / "c0.png"))
    bins = pd.DataFrame({"count": [0, 3, 2], "sum_prob": [0.0, INF, 1.0],
                         "sum_label": [0.0, 1.0, NAN]})
    assert _png_ok(F.binned_reliability_plot({"clean": bins, "none": bins.iloc[:0]},
                                             tmp_path / "b.png", "t"))
    assert _png_ok(F.binned_reliability_plot({}, tmp_path / "b0.png", "t"))


def test_case_figures_adversarial(tmp_path: Path) -> None:
    img = np.zeros((1, 8, 8))
    case = {"clean": img, "image": np.full((1, 8, 8), NAN), "saliency": np.full((8, 8), NAN),
            "saliency_clean": np.full((8, 8), INF), "value_range": np.array([1.0, 1.0])}
    probs = pd.DataFrame({"target": ["a", "b"], "prob": [0.5, NAN], "prob_clean": [INF, 0.2],
                          "label": [1, 0]})
    assert _png_ok(F.classification_case_figure(case, probs, "a", tmp_path / "c.png"))
    assert _png_ok(F.classification_case_figure(case, probs.iloc[:0], "a", tmp_path / "c0.png"))
    seg = {"clean": img, "image": img, "mask": np.ones((8, 8)), "value_range": np.array([0, 1.0]),
           "prob": np.full((1, 8, 8), NAN), "prob_clean": np.full((1, 8, 8), 0.5)}
    assert _png_ok(F.segmentation_case_figure(seg, tmp_path / "s.png"))
