"""One-class targets (issue 10, item 10): AUROC/AUPRC/sens@95spec undefined for a target with
no positives in the test set; said on the console, in run.json and in the report, and the macro
average is the mean over the defined targets.

One ``medfail run`` (the CLI, a Python entry point as the model) on 16 images whose third target
``cavity`` has no positives feeds every test here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from medfail.analysis.aggregate import macro_coverage, one_class_reasons
from medfail.cli import app
from tests.conftest import write_png_folder

TARGETS = ["disc", "bar", "cavity"]


def three_targets() -> torch.nn.Module:
    """Entry point for ``medfail run --model tests.test_one_class_targets:three_targets``:
    disc from the image maximum, bar from the top rows, cavity from the mean intensity."""

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            disc = torch.sigmoid((x.amax(dim=(1, 2, 3)) - 190.0) / 10.0)
            bar = torch.sigmoid((x[:, :, 2:5].mean(dim=(1, 2, 3)) - 120.0) / 20.0)
            cavity = torch.sigmoid((x.mean(dim=(1, 2, 3)) - 65.0) / 3.0)
            return torch.stack([disc, bar, cavity], dim=1)

    return Net()


three_targets.medfail_spec = {  # type: ignore[attr-defined]
    "task": "classification", "target_names": TARGETS, "multi_label": True,
    "input_size": [32, 32], "output": "probabilities"}


@pytest.fixture(scope="module")
def one_class_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("one_class")
    data = write_png_folder(root / "data", "classification", n=16)
    labels = pd.read_csv(data / "labels.csv")
    labels["cavity"] = 0  # no positives in the test set
    labels.to_csv(data / "labels.csv", index=False)
    cfg = root / "suite.yaml"
    cfg.write_text("tests: [gaussian_noise]\nseverities: [2]\nn_bootstrap: 50\n"
                   "uncertainty: []\nmitigate: false\n")
    result = CliRunner().invoke(app, [
        "run", "--model", "tests.test_one_class_targets:three_targets", "--data", str(data),
        "--task", "classification", "--config", str(cfg), "--out", str(root / "run"),
        "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run", result.output


def test_console_warns_once_naming_target_and_split(one_class_run: tuple[Path, str]) -> None:
    _, output = one_class_run
    warnings = [ln for ln in output.splitlines() if ln.startswith("warning: one class")]
    assert len(warnings) == 1, output
    line = warnings[0]
    assert "'cavity'" in line and "test split" in line and "no positives in 16 images" in line
    assert "2 of 3 targets" in line and "'disc'" not in line and "'bar'" not in line


def test_run_json_and_metrics_record_the_undefined_target(
        one_class_run: tuple[Path, str]) -> None:
    run, _ = one_class_run
    info = json.loads((run / "run.json").read_text())
    assert info["undefined_targets"] == {"test": {"cavity": "no positives in 16 images"}}
    metrics = pd.read_parquet(run / "metrics.parquet")
    rows = metrics[(metrics["target"] == "cavity") & (metrics["condition"] == "clean")
                   & (metrics["slice"] == "all")].set_index("metric")
    for metric in ("auroc", "auprc", "sens_at_95spec"):  # present, NaN, with its n
        assert np.isnan(rows.loc[metric, "value"]) and rows.loc[metric, "n"] == 16
        assert np.isnan(rows.loc[metric, "ci_low"]) and np.isnan(rows.loc[metric, "ci_high"])
    for cond in ("clean", "gaussian_noise@2"):
        assert macro_coverage(metrics, "auroc", cond) == (2, 3, ["cavity"])


@pytest.mark.parametrize("metric, score", [("auroc", roc_auc_score),
                                           ("auprc", average_precision_score)])
def test_macro_is_the_mean_over_defined_targets(one_class_run: tuple[Path, str], metric: str,
                                                score: object) -> None:
    run, _ = one_class_run
    metrics = pd.read_parquet(run / "metrics.parquet")
    for cond in ("clean", "gaussian_noise@2"):
        preds = pd.read_parquet(run / "predictions" / f"{cond}.parquet")
        assert one_class_reasons(preds) == {"cavity": "no positives in 16 images"}
        per_target = [score(g["label"], g["prob"])  # type: ignore[operator]
                      for t, g in preds.groupby("target") if t != "cavity"]
        macro = metrics[(metrics["condition"] == cond) & (metrics["slice"] == "all")
                        & (metrics["target"] == "macro") & (metrics["metric"] == metric)]
        assert macro["value"].iloc[0] == pytest.approx(np.mean(per_target), abs=1e-12)


def test_report_says_the_macro_leaves_the_target_out(one_class_run: tuple[Path, str]) -> None:
    run, _ = one_class_run
    html = (run / "report.html").read_text()
    problem = re.search(r'<section id="sec-problem">.*?</section>', html, re.S).group(0)
    note = "macro over 2 of 3 targets; auroc undefined for &#39;cavity&#39; (no positives in test)"
    assert note in problem
    appendix = re.search(r'<section id="sec-appendix-a".*?</section>', html, re.S).group(0)
    assert ("macro over 2 of 3 targets; auroc, auprc, sens_at_95spec undefined for "
            "&#39;cavity&#39; (no positives in test)") in appendix
    assert "distances in" not in html  # a classifier has no distance metric to give a unit


def test_one_class_reasons_no_negatives() -> None:
    preds = pd.DataFrame({"id": list("abcd") * 2, "target": ["x"] * 4 + ["y"] * 4,
                          "label": [1, 1, 1, 1, 0, 1, 0, 1]})
    assert one_class_reasons(preds) == {"x": "no negatives in 4 images"}
