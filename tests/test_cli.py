"""The command line as a new user drives it: train then run on folders the test writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medfail.cli import app
from tests.conftest import write_png_folder

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def fast_suite(tmp_path: Path) -> Path:
    cfg = tmp_path / "suite.yaml"
    cfg.write_text("tests: [gaussian_noise, gaussian_blur]\nseverities: [1, 3]\n"
                   "n_bootstrap: 100\nmc_passes: 3\n")
    return cfg


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_train_then_run_on_a_new_png_folder(task: str, tmp_path: Path, fast_suite: Path) -> None:
    train_dir = write_png_folder(tmp_path / "train", task, n=16, seed=1)
    test_dir = write_png_folder(tmp_path / "test", task, n=8, seed=2)
    model = tmp_path / "model.pt"
    code, out = invoke("train", "--task", task, "--data", str(train_dir), "--out", str(model),
                       "--size", "32", "--epochs", "1", "--val", str(test_dir), "--quiet")
    assert code == 0, out
    other_site = write_png_folder(tmp_path / "site2", task, n=8, seed=3)
    code, out = invoke("run", "--model", str(model), "--data", str(test_dir), "--task", task,
                       "--out", str(tmp_path / "run"), "--config", str(fast_suite), "--quiet",
                       "--calibration", str(train_dir), "--shift-data", str(other_site))
    assert code == 0, out
    run = tmp_path / "run"
    metrics = pd.read_parquet(run / "metrics.parquet")
    stress = metrics[~metrics["family"].isin(["uncertainty", "mitigation"])]
    assert stress["condition"].nunique() == 6  # clean, 2 tests x 2 severities, shift_data
    assert {"tta", "mc_dropout"} <= set(metrics["condition"])  # trained torch models: both run
    shift = metrics[(metrics["condition"] == "shift_data") & (metrics["slice"] == "all")]
    assert len(shift) and shift["delta_vs_clean"].notna().all()
    assert {"meta.site=s1", "meta.site=s2"} <= set(metrics["slice"])
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["name"] == "model.pt"
    if task == "classification":
        assert set(info["thresholds"]) == {"disc", "bar"}  # chosen on the calibration split
    log = info["model"]["spec"]
    assert log["task"] == task
    # the report rebuilds from the run directory alone, with the model deleted
    model.unlink()
    (run / "report.html").unlink()
    code, out = invoke("report", str(run))
    assert code == 0, out
    assert "medfail failure report" in (run / "report.html").read_text()


def test_training_log_is_carried_in_the_model(tmp_path: Path) -> None:
    from medfail.models.bundle import read_training_log

    data = write_png_folder(tmp_path / "d", "segmentation", n=6)
    code, out = invoke("train", "--task", "segmentation", "--data", str(data), "--out",
                       str(tmp_path / "m.pt"), "--size", "32", "--epochs", "2", "--quiet")
    assert code == 0, out
    log = read_training_log(tmp_path / "m.pt")
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 and e["loss"] > 0 for e in log["epochs"])
    assert log["seed"] == 0 and len(log["data_hash"]) == 64


def test_wrong_task_for_the_model(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "d", "segmentation", n=4)
    model = tmp_path / "seg.pt"
    assert invoke("train", "--task", "segmentation", "--data", str(data), "--out", str(model),
                  "--size", "32", "--epochs", "1", "--quiet")[0] == 0
    code, out = invoke("run", "--model", str(model), "--data", str(data), "--task",
                       "classification", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 2
    assert "seg.pt" in out and "segmentation model, but --task classification" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("breakage, expected", [
    ("no_labels", r"labels\.csv"),
    ("unknown_id", r"ghost"),
    ("empty", r"images"),
    ("unreadable", r"case001\.png"),
])
def test_bad_inputs_one_clear_message(breakage: str, expected: str, tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "d", "classification", n=4)
    if breakage == "no_labels":
        (data / "labels.csv").unlink()
    elif breakage == "unknown_id":
        with (data / "labels.csv").open("a") as f:
            f.write("ghost,1,0\n")
    elif breakage == "empty":
        for p in (data / "images").iterdir():
            p.unlink()
    elif breakage == "unreadable":
        (data / "images" / "case001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code, out = invoke("train", "--task", "classification", "--data", str(data), "--out",
                       str(tmp_path / "m.pt"), "--epochs", "1", "--quiet")
    assert code == 2, out
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1
    assert re.search(expected, out), out
    assert "Traceback" not in out
    assert not (tmp_path / "m.pt").exists()


def test_list_and_help() -> None:
    code, out = invoke("list")
    assert code == 0
    for name in ("gaussian_noise", "gaussian_blur", "jpeg", "brightness", "contrast", "auroc",
                 "dice", "boundary_f1"):
        assert name in out
    for cmd in ("demo", "train", "run", "report", "list"):
        code, out = invoke(cmd, "--help")
        assert code == 0 and "Example" in out


def test_help_keeps_extras_in_brackets() -> None:
    """Console markup must not eat ``[ray]`` in ``pip install 'medfail[ray]'``."""
    code, out = invoke("run", "--help")
    assert code == 0
    assert "medfail[ray]" in re.sub(r"[\s│]+", "", out)


def test_run_infers_the_task_from_the_model_spec(tmp_path: Path) -> None:
    """Without --task, the task is the one the model's spec names (said on stdout)."""
    data = write_png_folder(tmp_path / "data", "segmentation", n=6)
    cfg = tmp_path / "suite.yaml"
    cfg.write_text("tests: [jpeg]\nseverities: [1]\nuncertainty: []\nmitigate: false\n"
                   "n_bootstrap: 20\n")
    out = tmp_path / "run"
    code, text = invoke("run", "--model", "tests.test_check_gate:bright_segmenter", "--data",
                        str(data), "--out", str(out), "--config", str(cfg), "--quiet")
    assert code == 0, text
    assert "task: segmentation (from the model's spec)" in text
    assert json.loads((out / "run.json").read_text())["task"] == "segmentation"
