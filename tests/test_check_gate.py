"""``medfail check`` (the CI gate) and ``medfail run --fail-on-checks``: exit codes 0 / 1 / 2,
one line per check and condition, JUnit XML with the schema's required fields."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from tests.conftest import write_png_folder
from tests.test_engine import threshold_segmenter

TESTS = ["gaussian_blur", "jpeg"]


def bright_segmenter() -> Any:
    """Entry point for ``medfail run --model tests.test_check_gate:bright_segmenter``."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    return forward


bright_segmenter.medfail_spec = {"task": "segmentation",  # type: ignore[attr-defined]
                                 "target_names": ["lesion"], "output": "probabilities"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gate")
    data = open_dataset(write_png_folder(tmp / "data", "segmentation", n=12), "segmentation")
    return run_suite(threshold_segmenter(), data, tmp / "run",
                     SuiteConfig(tests=TESTS, severities=[3], uncertainty=[], mitigate=False,
                                 n_bootstrap=50),
                     model_info={"name": "threshold", "sha256": "0" * 64}, progress=False,
                     render=False)


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _check(*args: str) -> Any:
    return CliRunner().invoke(app, ["check", *map(str, args)])


def _drops(run: Path) -> dict[str, float]:
    m = pd.read_parquet(run / "metrics.parquet")
    m = m[(m["metric"] == "dice") & (m["slice"] == "all") & (m["severity"] == 3)]
    return {r.condition: -r.delta_vs_clean for r in m.itertuples()}


def test_exit_0_when_every_check_passes_and_junit_lists_them(run: Path, tmp_path: Path) -> None:
    checks = _yaml(tmp_path / "c.yaml", "checks: [{metric: dice, max_drop: 1.0, severity: 3}]")
    junit = tmp_path / "out" / "checks.xml"
    result = _check(run, "--checks", checks, "--junit", junit)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["PASS", "PASS"]
    assert {ln.split("  ")[-1].split(":")[0] for ln in lines[:-1]} == {f"{t}@3" for t in TESTS}
    assert lines[-1] == "2 of 2 checks passed"
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    cases = suite.findall("testcase")
    assert {c.get("name") for c in cases} == {f"{t}@3" for t in TESTS}
    assert all(c.get("classname") and c.find("failure") is None for c in cases)


def test_exit_1_names_the_failing_condition(run: Path, tmp_path: Path) -> None:
    drops = _drops(run)
    assert drops["gaussian_blur@3"] > 0.02  # the blur breaks the threshold segmenter
    limit = drops["gaussian_blur@3"] / 2
    checks = _yaml(tmp_path / "c.yaml", f"checks: [{{metric: dice, max_drop: {limit}, "
                   "severity: 3}]")
    junit = tmp_path / "checks.xml"
    result = _check(run, "--checks", checks, "--junit", junit)
    assert result.exit_code == 1, result.output
    failing = [ln for ln in result.output.splitlines() if ln.startswith("FAIL")]
    assert any("gaussian_blur@3" in ln for ln in failing)
    expected = sum(d > limit for d in drops.values())
    assert len(failing) == expected
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == str(expected)
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert {c.get("name") for c in failed} == {c for c, d in drops.items() if d > limit}
    assert all(c.find("failure").get("message") for c in failed)  # type: ignore[union-attr]


@pytest.mark.parametrize("text, expected", [
    ("checks: [{metric: auroc, max_drop: 0.1}]", "expected a segmentation metric"),
    ("checks: [{metric: dice, max_drop: -1}]", "max_drop"),
    ("severities: [1]", "names no `checks`"),
    ("checks: [{metric: dice, max_drop: 0.1, severity: 2}]", "no stress test ran at severity 2"),
    ("checks: [{metric: lesion_f1, max_drop: 0.1, severity: 3}]", None),
])
def test_exit_2_on_a_check_the_run_cannot_evaluate(run: Path, tmp_path: Path, text: str,
                                                  expected: str | None) -> None:
    result = _check(run, "--checks", _yaml(tmp_path / "c.yaml", text))
    if expected is None:  # a metric the run has: evaluated (0 or 1), not a usage error
        assert result.exit_code in (0, 1), result.output
        return
    assert result.exit_code == 2, result.output
    assert expected in result.output


def test_exit_2_on_a_half_written_or_damaged_run(run: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    (copy / "metrics.parquet").write_bytes(b"damaged")
    result = _check(copy)
    assert result.exit_code == 2 and "metrics.parquet" in result.output
    (copy / "run.json").unlink()
    result = _check(copy)
    assert result.exit_code == 2 and "half written" in result.output
    assert _check(tmp_path / "nowhere").exit_code == 2


def test_run_fail_on_checks_exits_1_after_writing_the_run(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "data", "segmentation", n=8)
    config = _yaml(tmp_path / "suite.yaml", "tests: [gaussian_blur]\nseverities: [3]\n"
                   "uncertainty: []\nmitigate: false\nn_bootstrap: 20\n"
                   "checks: [{metric: dice, max_drop: 0.0, severity: 3}]\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", "--model", "tests.test_check_gate:bright_segmenter", "--data", str(data),
        "--task", "segmentation", "--out", str(out), "--config", str(config), "--quiet",
        "--fail-on-checks"])
    m = pd.read_parquet(out / "metrics.parquet")
    drop = -float(m.loc[(m["metric"] == "dice") & (m["slice"] == "all")
                        & (m["condition"] == "gaussian_blur@3"), "delta_vs_clean"].iloc[0])
    assert (out / "report.html").exists()
    assert result.exit_code == (1 if drop > 0 else 0), result.output
    assert "FAIL" in result.output if drop > 0 else "PASS" in result.output
