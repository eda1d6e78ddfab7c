"""``medfail log`` / ``--mlflow``: a run directory logged to a real MLflow tracking store
(a local folder store started here) and read back with the MLflow client."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from medfail.analysis.gate import gate
from medfail.analysis.mlflow_log import log_run, metric_key
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from tests.conftest import write_png_folder
from tests.test_engine import threshold_segmenter

mlflow = pytest.importorskip("mlflow", reason="the MLflow client (medfail[mlflow]) is not "
                             "installed")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mlflow")
    data = open_dataset(write_png_folder(tmp / "data", "segmentation", n=8), "segmentation")
    return run_suite(threshold_segmenter(), data, tmp / "run",
                     SuiteConfig(tests=["gaussian_blur", "jpeg"], severities=[2],
                                 uncertainty=[], mitigate=False, n_bootstrap=20),
                     model_info={"name": "threshold", "sha256": "ab" * 32}, progress=False)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for folders
    return (tmp_path / "mlruns").as_uri()


def test_params_metrics_and_report_read_back(run: Path, store: str, tmp_path: Path) -> None:
    run_id = log_run(run, store, experiment="medfail-test")
    client = mlflow.tracking.MlflowClient(store)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["task"] == "segmentation" and params["model_sha256"] == "ab" * 32
    assert params["config.n_bootstrap"] == "20" and params["n_conditions"] == "3"
    metrics = pd.read_parquet(run / "metrics.parquet")
    whole = metrics[metrics["slice"] == "all"]
    for r in whole[whole["metric"] == "dice"].itertuples():
        key = metric_key("dice", r.target, r.condition)
        assert logged.data.metrics[key] == pytest.approx(r.value, rel=0, abs=1e-12)
        assert logged.data.metrics[metric_key("ci_low", "dice", r.target, r.condition)] \
            == pytest.approx(r.ci_low, abs=1e-12)
    assert metric_key("dice", "lesion", "jpeg@2") in logged.data.metrics
    assert "dice/lesion/jpeg:s2" in logged.data.metrics
    checks = gate(run)
    assert logged.data.metrics["checks_passed"] + logged.data.metrics["checks_failed"] \
        == len(checks)
    assert logged.data.metrics["checks_failed"] == sum(c["verdict"] == "fail" for c in checks)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "report.pdf", "metrics.parquet", "run.json"} <= names
    local = client.download_artifacts(run_id, "report.html", str(tmp_path))
    assert Path(local).read_bytes() == (run / "report.html").read_bytes()
    assert logged.data.tags["medfail.run_dir"] == "run"


def test_metric_names_are_ones_mlflow_accepts() -> None:
    assert metric_key("dice", "lesion", "tta|gamma@3") == "dice/lesion/tta:gamma:s3"
    assert metric_key("auroc", "macro", "ct_window(lung)@1") == "auroc/macro/ct_window_lung_:s1"


def test_a_half_written_run_is_refused_before_logging(run: Path, store: str,
                                                      tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    (copy / "run.json").unlink()
    with pytest.raises(MedfailInputError, match="half written"):
        log_run(copy, store)
    assert not Path(store.removeprefix("file://")).exists()  # nothing was logged


def test_cli_run_mlflow_and_log(store: str, tmp_path: Path) -> None:
    """``medfail run --mlflow URI`` logs the finished run; ``medfail log`` logs it again."""
    from typer.testing import CliRunner

    from medfail.cli import app

    data = write_png_folder(tmp_path / "data", "segmentation", n=6)
    cfg = tmp_path / "suite.yaml"
    cfg.write_text("tests: [jpeg]\nseverities: [1]\nuncertainty: []\nmitigate: false\n"
                   "n_bootstrap: 20\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", "--model", "tests.test_check_gate:bright_segmenter", "--data", str(data),
        "--out", str(out), "--config", str(cfg), "--quiet", "--mlflow", store])
    assert result.exit_code == 0, result.output
    assert "logged to MLflow" in result.output
    result = CliRunner().invoke(app, ["log", str(out), "--tracking-uri", store,
                                      "--experiment", "again"])
    assert result.exit_code == 0, result.output
    client = mlflow.tracking.MlflowClient(store)
    for name in ("medfail", "again"):
        exp = client.get_experiment_by_name(name)
        (logged,) = client.search_runs([exp.experiment_id])
        assert logged.data.params["task"] == "segmentation"
    result = CliRunner().invoke(app, ["log", str(tmp_path / "nowhere"), "--tracking-uri", store])
    assert result.exit_code == 2 and "nowhere" in result.output
