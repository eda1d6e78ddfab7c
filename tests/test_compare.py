"""medfail compare: paired deltas between two runs on the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import write_png_folder
from typer.testing import CliRunner

from medfail.analysis.compare import compare_runs
from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec


def _model(level: float) -> Segmenter:
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - level) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


def test_compare_two_segmenters(seg_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(seg_folder, "segmentation")
    config = SuiteConfig(tests=["gaussian_noise"], severities=[3], uncertainty=[],
                         mitigate=False, n_bootstrap=50)
    run_a = run_suite(_model(130.0), ds, tmp_path / "a", config, progress=False, render=False)
    run_b = run_suite(_model(300.0), ds, tmp_path / "b", config, progress=False, render=False)
    table = compare_runs(run_a, run_b, n_bootstrap=200)
    dice = table[(table["metric"] == "dice") & (table["condition"] == "clean")].iloc[0]
    ma = pd.read_parquet(run_a / "metrics.parquet")
    a_clean = ma[(ma["metric"] == "dice") & (ma["condition"] == "clean")
                 & (ma["slice"] == "all")]["value"].iloc[0]
    assert dice["value_a"] == a_clean
    assert dice["delta"] < 0 and dice["paired"] and dice["ci_high"] < 0  # B misses everything
    assert dice["n"] == len(ds)
    same = compare_runs(run_a, run_a, n_bootstrap=50)
    assert np.allclose(same.loc[same["paired"], ["delta", "ci_low", "ci_high"]], 0.0)
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b), "--out",
                                      str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "compare_delta.png" in html and 'class="drop"' in html
    bad = CliRunner().invoke(app, ["compare", str(run_a), str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output


def test_compare_output_is_listed_in_the_run_directory(seg_folder: Path, tmp_path: Path) -> None:
    """The default RUN_B/compare is inside run B: its files are listed in B's manifest, so a
    re-run of B with --overwrite removes them (stale comparisons do not pass for the user's);
    --out a file and a damaged run are one error line each (were tracebacks)."""
    from medfail.engine.manifest import Manifest

    ds = open_dataset(seg_folder, "segmentation")
    config = SuiteConfig(tests=["jpeg"], severities=[1], uncertainty=[], mitigate=False,
                         n_bootstrap=20)
    run_a = run_suite(_model(130.0), ds, tmp_path / "a", config, progress=False, render=False)
    run_b = run_suite(_model(300.0), ds, tmp_path / "b", config, progress=False, render=False)
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.read(run_b)
    assert manifest is not None
    assert {"compare/compare.parquet", "compare/compare.html",
            "compare/figures/compare_delta.png"} <= manifest.files
    manifest.remove("compare")  # what --overwrite does to every listed file
    assert not (run_b / "compare").exists()
    (tmp_path / "taken").write_text("mine")
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_a), "--out",
                                      str(tmp_path / "taken")])
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "taken" in result.output and (tmp_path / "taken").read_text() == "mine"
    metrics = run_a / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:100])
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 2 and "metrics.parquet: damaged" in result.output, result.output


def test_compare_classifiers_pairs_auroc(tmp_path: Path) -> None:
    from medfail.models.adapters import Classifier

    # 32 images: both classes of 'bar' in (nearly) every resample. With the 16-image fixture
    # (3 bar negatives) ~4 % of resamples have one class, more than the documented rule allows
    # before an interval is undefined (docs/metrics.md, undefined resamples).
    cls_folder = write_png_folder(tmp_path / "cls", "classification", n=32)

    spec = ModelSpec(task="classification", target_names=["disc", "bar"], multi_label=True,
                     input_size=(32, 32), output="probabilities")

    def good(x: torch.Tensor) -> torch.Tensor:
        disc = torch.sigmoid((x.amax(dim=(1, 2, 3)) - 190.0) / 10.0)
        bar = torch.sigmoid((x[:, :, 2:5].mean(dim=(1, 2, 3)) - 120.0) / 20.0)
        return torch.stack([disc, bar], dim=1)

    def blind(x: torch.Tensor) -> torch.Tensor:  # ignores the disc
        return torch.stack([torch.sigmoid(x.mean(dim=(1, 2, 3)) * 0), good(x)[:, 1]], dim=1)

    ds = open_dataset(cls_folder, "classification", target_names=["disc", "bar"])
    config = SuiteConfig(tests=["jpeg"], severities=[1], uncertainty=[], mitigate=False,
                         n_bootstrap=50)
    run_a = run_suite(Classifier(spec, good), ds, tmp_path / "a", config, progress=False,
                      render=False)
    run_b = run_suite(Classifier(spec, blind), ds, tmp_path / "b", config, progress=False,
                      render=False)
    table = compare_runs(run_a, run_b, n_bootstrap=200).set_index(
        ["condition", "target", "metric"])
    disc = table.loc[("clean", "disc", "auroc")]
    assert disc["paired"] and disc["delta"] < -0.3 and disc["ci_high"] < 0
    bar = table.loc[("clean", "bar", "auroc")]
    assert bar["paired"] and bar["delta"] == 0 and bar["ci_low"] == bar["ci_high"] == 0
    assert not table.loc[("clean", "macro", "auroc"), "paired"]  # macro: no paired interval
