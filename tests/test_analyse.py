"""``medfail analyse``: the analysis tables rebuilt from a run directory alone (issue 12).

The run is made once per module with in-memory models; then the data folder is deleted and every
model entry point is patched to raise, so any forward pass fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medfail import rundir
from medfail.analysis.analyse import analyse
from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models import adapters
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.spec import ModelSpec
from tests.conftest import write_png_folder
from tests.test_engine import brightness_classifier as classifier
from tests.test_engine import threshold_segmenter as segmenter

ROOT = Path(__file__).resolve().parents[1]
COMMON: dict[str, Any] = {"tests": ["gaussian_noise", "gaussian_blur"], "severities": [3],
                          "n_bootstrap": 40, "uncertainty": ["tta"], "min_slice_n": 3}


def tables(run: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run / name) for name in rundir.ANALYSIS_TABLES}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A segmentation run (calibration split: morphology; second site) and a multi-label
    classification run (calibration: thresholds and temperatures), with their tables; the data
    folders are deleted afterwards."""
    tmp = tmp_path_factory.mktemp("analyse")
    data = {k: write_png_folder(tmp / k, task, n=n, seed=s) for k, task, n, s in (
        ("s", "segmentation", 10, 0), ("sc", "segmentation", 4, 1), ("ss", "segmentation", 4, 2),
        ("c", "classification", 16, 0), ("cc", "classification", 12, 1))}
    seg = run_suite(segmenter(), open_dataset(data["s"], "segmentation"), tmp / "run_s",
                    SuiteConfig(**COMMON), progress=False,
                    calibration=open_dataset(data["sc"], "segmentation"),
                    shift=open_dataset(data["ss"], "segmentation"))
    names = ["disc", "bar"]
    cls = run_suite(classifier(), open_dataset(data["c"], "classification", target_names=names),
                    tmp / "run_c", SuiteConfig(**COMMON), progress=False, render=False,
                    calibration=open_dataset(data["cc"], "classification", target_names=names))
    for folder in data.values():
        shutil.rmtree(folder)  # no images from here on
    return {"segmentation": seg, "classification": cls, "tables": {
        "segmentation": tables(seg), "classification": tables(cls)}}


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any forward pass (or prediction scheduling) raises."""
    forbid_models(monkeypatch)


def forbid_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was called during analyse")

    for cls in (adapters.ModelAdapter, Segmenter, Classifier, adapters.PromptableSegmenter):
        for name in ("predict_proba", "_probs"):
            if hasattr(cls, name):
                monkeypatch.setattr(cls, name, boom)
    monkeypatch.setattr("medfail.engine.executors.make_executor", boom)


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_analyse_reproduces_the_run_tables(runs: dict[str, Any], task: str,
                                           tmp_path: Path) -> None:
    run = copy_run(runs[task], tmp_path / "run")
    before_run = json.loads((run / "run.json").read_text())
    for name in rundir.ANALYSIS_TABLES:
        (run / name).unlink()  # rebuilt from the stored predictions alone
    analyse(run, progress=False)
    for name, expected in runs["tables"][task].items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), expected, obj=name)
    after = json.loads((run / "run.json").read_text())
    for key in ("thresholds", "temperatures", "undefined_targets", "config"):
        assert after[key] == before_run[key], key
    assert set(after["thresholds"]) == set(after["data"]["targets"])  # one value per target


class Threshold(torch.nn.Module):
    """Foreground probability = sigmoid((x - 130) / 10), scriptable (a model file)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)


def test_cli_run_then_analyse_without_model_file_or_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`medfail run` with a model file, then both the file and the images deleted: `medfail
    analyse` rebuilds tables equal to the run's and re-renders the report."""
    model = tmp_path / "seg.pt"
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    torch.jit.save(torch.jit.script(Threshold()), str(model),
                   _extra_files={"medfail_spec.json": json.dumps(spec.to_dict())})
    data = write_png_folder(tmp_path / "data", "segmentation", n=8, seed=4)
    monkeypatch.undo()  # the run itself may call the model
    suite = tmp_path / "suite.yaml"
    suite.write_text("tests: [gaussian_noise]\nseverities: [3]\nn_bootstrap: 30\n"
                     "uncertainty: [tta]\nmin_slice_n: 3\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--model", str(model), "--data", str(data),
                                      "--task", "segmentation", "--out", str(run),
                                      "--config", str(suite), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = tables(run)
    forbid_models(monkeypatch)
    model.unlink()
    shutil.rmtree(data)
    (run / "report.html").unlink()
    for name in rundir.ANALYSIS_TABLES:
        (run / name).unlink()
    result = CliRunner().invoke(app, ["analyse", str(run), "--config", str(suite), "--quiet"])
    assert result.exit_code == 0, result.output
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), frame, obj=name)
    assert (run / "report.html").exists()


def test_run_json_stores_one_threshold_per_target(runs: dict[str, Any]) -> None:
    """Segmentation (no calibrated threshold) stores the config threshold per target too."""
    info = json.loads((runs["segmentation"] / "run.json").read_text())
    assert info["thresholds"] == {"lesion": 0.5}
    cls = json.loads((runs["classification"] / "run.json").read_text())
    assert set(cls["thresholds"]) == {"disc", "bar"}


def test_cli_analyse_new_metadata_column_and_bootstrap_count(runs: dict[str, Any],
                                                             tmp_path: Path) -> None:
    run = copy_run(runs["segmentation"], tmp_path / "run")
    ids = pd.read_parquet(run / "predictions" / "index.parquet")["id"].tolist()
    extra = tmp_path / "extra.csv"
    pd.DataFrame({"id": ids, "scanner": ["A" if i % 2 else "B" for i in range(len(ids))]}
                 ).to_csv(extra, index=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text("n_bootstrap: 25\n")
    result = CliRunner().invoke(app, ["analyse", str(run), "--metadata", str(extra),
                                      "--config", str(suite), "--quiet"])
    assert result.exit_code == 0, result.output
    slices = pd.read_parquet(run / "slices.parquet")
    assert {"meta.scanner=A", "meta.scanner=B"} <= set(slices["slice"])
    assert {"meta.site=s1", "meta.site=s2"} <= set(slices["slice"])  # stored ones kept
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert "meta.scanner=A" in set(metrics["slice"])
    old = runs["tables"]["segmentation"]["metrics.parquet"]
    key = ["condition", "slice", "target", "metric"]
    merged = metrics.merge(old, on=key, suffixes=("", "_old"))
    assert len(merged) == len(old)
    pd.testing.assert_series_equal(merged["value"], merged["value_old"], check_names=False)
    assert not merged["ci_low"].equals(merged["ci_low_old"])  # 25 resamples, not 40
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["n_bootstrap"] == 25
    assert info["analysis"] == {"changed_options": ["n_bootstrap"], "metadata": "extra.csv",
                                "metadata_columns": ["scanner"]}
    assert "meta.scanner=A" in (run / "report.html").read_text(encoding="utf-8")


def test_cli_analyse_refuses_options_that_need_forward_passes(runs: dict[str, Any],
                                                              tmp_path: Path) -> None:
    run = copy_run(runs["segmentation"], tmp_path / "run")
    suite = tmp_path / "suite.yaml"
    suite.write_text("severities: [1]\nn_bootstrap: 25\n")
    result = CliRunner().invoke(app, ["analyse", str(run), "--config", str(suite)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "suite.yaml" in lines[0] and "severities" in lines[0] and "medfail run" in lines[0]


@pytest.mark.parametrize(("rows", "problem"), [
    ("id,scanner\nnot_a_case,A\n", "not in this run"),
    ("case,scanner\ncase000,A\n", "no `id` column"),
    ("id,scanner\ncase000,A\ncase000,B\n", "duplicate ids"),
])
def test_cli_analyse_bad_metadata(runs: dict[str, Any], tmp_path: Path, rows: str,
                                  problem: str) -> None:
    extra = tmp_path / "extra.csv"
    extra.write_text(rows)
    run = copy_run(runs["segmentation"], tmp_path / "run")
    result = CliRunner().invoke(app, ["analyse", str(run), "--metadata", str(extra)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "extra.csv" in result.output
    assert problem in result.output


def test_analyse_warns_when_the_worst_condition_moves(runs: dict[str, Any], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Stored mitigations ran on another worst condition (here: run.json says so): one warning
    line, and the mitigation table keeps what is stored."""
    run = copy_run(runs["segmentation"], tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    worst = info["mitigation"]["worst_condition"]
    info["mitigation"]["worst_condition"] = "elsewhere@3"
    (run / "run.json").write_text(json.dumps(info))
    analyse(run, {"n_bootstrap": 40, "min_slice_n": 4}, progress=False)
    lines = [x for x in capsys.readouterr().err.splitlines() if "worst condition" in x]
    assert len(lines) == 1 and worst in lines[0] and "elsewhere@3" in lines[0]
    mitigations = pd.read_parquet(run / "mitigations.parquet")
    assert worst in set(mitigations["base"])


def test_documented_paths_match_the_run_directory_module() -> None:
    """docs/run_directory.md's path list is exactly :data:`medfail.rundir.DOCUMENTED`."""
    text = (ROOT / "docs" / "run_directory.md").read_text(encoding="utf-8")
    section = text.split("## Every path", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- `([^`]+)`", section, flags=re.M)
    assert sorted(listed) == sorted(rundir.DOCUMENTED)
    assert len(listed) == len(set(listed))


def test_only_the_run_directory_module_builds_paths_into_it() -> None:
    """``grep -rn '"predictions"' src/medfail`` finds the path only in medfail/rundir.py, and no
    other module joins a run-directory name onto a path (``run_dir / "metrics.parquet"``)."""
    names = ["per_sample.parquet", "metrics.parquet", ".parts", "ranking.parquet",
             "slices.parquet", "calibration.parquet", "mitigations.parquet", "evidence.parquet",
             "figures", "cases", "run.json", "report.html", "report.pdf", ".medfail"]
    joined = re.compile(r"/\s*f?\"(" + "|".join(map(re.escape, names)) + r")[\"/]")
    found = []
    for path in sorted((ROOT / "src" / "medfail").rglob("*.py")):
        if path.name == "rundir.py":
            continue
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}: predictions" for _ in range(text.count('"predictions"'))]
        found += [f"{rel}: {m.group(0)}" for m in joined.finditer(text)]
    assert found == []


def test_cli_analyse_repairs_damaged_tables_and_names_damaged_inputs(
        runs: dict[str, Any], tmp_path: Path) -> None:
    """A truncated metrics.parquet is rebuilt; a truncated per_sample.parquet (an input) is one
    `error:` line naming it, exit 2."""
    run = copy_run(runs["segmentation"], tmp_path / "run")
    (run / "metrics.parquet").write_bytes((run / "metrics.parquet").read_bytes()[:100])
    result = CliRunner().invoke(app, ["analyse", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(run / "metrics.parquet"),
                                  runs["tables"]["segmentation"]["metrics.parquet"])
    (run / "per_sample.parquet").write_bytes((run / "per_sample.parquet").read_bytes()[:100])
    result = CliRunner().invoke(app, ["analyse", str(run), "--quiet"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "per_sample.parquet: damaged" in result.output


def test_thresholds_are_normalised_in_one_place() -> None:
    """``rundir.per_target_thresholds`` is the one normalisation of ``run.json: thresholds``
    (a number for all targets, or ``{target: number}``); no other module re-implements it."""
    assert rundir.per_target_thresholds(0.3, ["a", "b"]) == {"a": 0.3, "b": 0.3}
    assert rundir.per_target_thresholds({"a": 0.2, "b": 0.7, "c": 1.0}, ["b", "a"]) == {
        "b": 0.7, "a": 0.2}
    assert rundir.per_target_thresholds(None, ["a"]) == {"a": 0.5}
    with pytest.raises(KeyError):
        rundir.per_target_thresholds({"a": 0.2}, ["a", "b"])
    copy = re.compile(r"isinstance\(\w*thr\w*, (dict|Mapping)\)")
    found = [p.name for p in sorted((ROOT / "src" / "medfail").rglob("*.py"))
             if p.name != "rundir.py" and copy.search(p.read_text(encoding="utf-8"))]
    assert found == []
