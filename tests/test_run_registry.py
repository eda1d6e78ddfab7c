"""``medfail runs`` and ``medfail history``: a registry of run directories (issue 15 item 2).

Three small finished runs of two model versions, two half-written runs (a copy without its
metrics.parquet, a folder holding only the manifest) and two folders that are not runs (the data
folder, a notes folder) under one ROOT.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medfail.analysis import run_registry
from medfail.analysis.gate import gate
from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec
from tests.conftest import write_png_folder
from tests.test_engine import threshold_segmenter

CONFIG = SuiteConfig(tests=["jpeg", "gamma"], severities=[2], uncertainty=[], mitigate=False,
                     n_bootstrap=20, checks=[{"metric": "dice", "max_drop": 0.05, "severity": 2}])
V1 = {"name": "seg_v1.pt", "sha256": hashlib.sha256(b"model v1").hexdigest()}
V2 = {"name": "seg_v2.pt", "sha256": hashlib.sha256(b"model v2").hexdigest()}
RUNS = ("v1", "v2", "v2_seed1")  # oldest first


def high_threshold_segmenter() -> Segmenter:
    """Foreground probability = sigmoid((x - 190) / 10): a second model version."""
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 190.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry") / "runs"
    data = write_png_folder(root / "data", "segmentation", n=8, seed=0)  # not a run
    ds = open_dataset(data, "segmentation")
    made = ((threshold_segmenter(), V1, 0), (high_threshold_segmenter(), V2, 0),
            (high_threshold_segmenter(), V2, 1))
    for name, (model, info, seed) in zip(RUNS, made, strict=True):
        run_suite(model, ds, root / name, replace(CONFIG, seed=seed), model_info=info,
                  render=False, progress=False)
    start = (root / "v1" / "run.json").stat().st_mtime
    for k, name in enumerate(RUNS):  # dates one minute apart, whatever the file system's clock
        os.utime(root / name / "run.json", (start + 60 * k, start + 60 * k))
    shutil.copytree(root / "v1", root / "half")
    (root / "half" / "metrics.parquet").unlink()  # half written
    (root / "killed" / ".medfail").mkdir(parents=True)  # killed before run.json was written
    shutil.copy(root / "v1" / ".medfail" / "manifest.json", root / "killed" / ".medfail")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run\n")
    return root


def clean_dice(run: Path, condition: str = "clean") -> pd.Series:
    m = pd.read_parquet(run / "metrics.parquet")
    return m[(m["metric"] == "dice") & (m["condition"] == condition) & (m["slice"] == "all")
             & (m["target"] == "lesion")].iloc[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for name in (*RUNS, "half") for p in (root / name).rglob("*") if p.is_file()}


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_runs_lists_the_finished_runs_and_notes_the_half_written_one(root: Path) -> None:
    result = invoke("runs", root)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    rows = [line for line in lines[1:] if not line.startswith("note:")]
    assert [row.split()[0] for row in rows] == list(RUNS)  # oldest first; no data/, notes/
    for row, info in zip(rows, (V1, V2, V2), strict=True):
        name = row.split()[0]
        run_json = run_registry.RunTables(root / name).run
        assert f"{info['name']}@{info['sha256'][:12]}" in row
        assert run_json["data"]["content_hash"][:12] in row
        assert f"dice {clean_dice(root / name)['value']:.3f}" in row
        checks = gate(root / name)
        assert f"{sum(r['verdict'] == 'pass' for r in checks)}/{len(checks)}" in row
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 2
    assert "skipped half" in notes[0] and "metrics.parquet" in notes[0]
    assert "skipped killed" in notes[1] and "run.json" in notes[1]


def test_runs_sql_queries_the_union_of_the_runs(root: Path) -> None:
    result = invoke("runs", root, "--sql", "select count(distinct run) from metrics")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].strip() == str(len(RUNS))
    result = invoke("runs", root, "--sql",
                    "select run, model_sha256, checks_total from runs order by date")
    assert result.exit_code == 0, result.output
    out = result.stdout.strip().splitlines()[1:]
    assert [line.split()[:2] for line in out] == [
        [name, info["sha256"]] for name, info in zip(RUNS, (V1, V2, V2), strict=True)]
    assert "half" in result.stderr  # the note, kept off the query's output


def test_registry_views_hold_every_finished_run(root: Path) -> None:
    found = run_registry.scan(root)
    con = run_registry.connect(found)
    n = con.sql("select run, count(*) from metrics group by run order by run").fetchall()
    assert n == [(name, len(pd.read_parquet(root / name / "metrics.parquet")))
                 for name in sorted(RUNS)]
    names = con.sql("select json_extract_string(run_json, '$.model.name') from run_info "
                    "order by run").fetchall()
    assert [r[0] for r in names] == [V1["name"], V2["name"], V2["name"]]


def test_runs_bad_sql_is_one_error_line(root: Path) -> None:
    result = invoke("runs", root, "--sql", "select nope from runs")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: SQL:") and "nope" in result.output


def test_history_draws_the_metric_across_runs(root: Path, tmp_path: Path) -> None:
    before = snapshot(root)
    result = invoke("history", root, "--metric", "dice", "--condition", "gamma@2", "--out",
                    tmp_path / "h")
    assert result.exit_code == 0, result.output
    png, page = tmp_path / "h" / "history.png", tmp_path / "h" / "history.html"
    assert png.stat().st_size > 0
    with Image.open(png) as img:
        assert img.format == "PNG" and min(img.size) > 0
    text = page.read_text(encoding="utf-8")
    values = [f"{clean_dice(root / name, 'gamma@2')['value']:.4f}" for name in RUNS]
    assert all(v in text for v in values)
    assert "data:image/png;base64," in text
    by_date = [text.index(f"<td>{name}</td>") for name in RUNS]
    assert by_date == sorted(by_date)
    assert snapshot(root) == before  # nothing written inside a run directory


def test_history_order_model_and_default_out(root: Path) -> None:
    result = invoke("history", root, "--metric", "dice", "--condition", "gamma@2", "--order",
                    "model")
    assert result.exit_code == 0, result.output
    text = (root / "history" / "history.html").read_text(encoding="utf-8")
    at = {name: text.index(f"<td>{name}</td>") for name in RUNS}
    assert at["v1"] < at["v2"] < at["v2_seed1"]  # seg_v1 before seg_v2, then by date
    assert invoke("runs", root).output.count("seg_v") == len(RUNS)  # history/ is not a run


def test_history_absent_metric_or_condition_is_one_clear_error(root: Path,
                                                               tmp_path: Path) -> None:
    result = invoke("history", root, "--metric", "dicey", "--condition", "gamma@2", "--out",
                    tmp_path / "h")
    assert result.exit_code == 2
    assert "'dicey'" in result.output and "dice" in result.output.split("'dicey'")[1]
    result = invoke("history", root, "--metric", "dice", "--condition", "gamma@3", "--out",
                    tmp_path / "h")
    assert result.exit_code == 2
    assert "'gamma@3'" in result.output and "gamma@2" in result.output
    assert not (tmp_path / "h").exists()


def test_history_never_writes_into_a_run(root: Path) -> None:
    result = invoke("history", root, "--metric", "dice", "--out", root / "v1" / "history")
    assert result.exit_code == 2
    assert "inside the run directory" in result.output
    assert not (root / "v1" / "history").exists()


def test_runs_root_must_be_a_folder(tmp_path: Path) -> None:
    result = invoke("runs", tmp_path / "missing")
    assert result.exit_code == 2
    assert "missing" in result.output and "not a folder" in result.output


def test_help_has_examples() -> None:
    for cmd in ("runs", "history"):
        result = invoke(cmd, "--help")
        assert result.exit_code == 0 and "Example: medfail " + cmd in result.output
