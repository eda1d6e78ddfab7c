"""``medfail run --runtime onnxruntime``: export once, first-batch check, fallback, run.json.

Tolerance: probabilities agree within 1e-4 (the first-batch check); metrics of the ORT run equal
the torch run's within 1e-3 (thresholded metrics may flip only at a probability within 1e-4 of
the threshold; none does on this data, so most are exactly equal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_png_folder
from test_engine import brightness_classifier
from torch import nn
from typer.testing import CliRunner

from medfail.cli import app
from medfail.engine.executors import ModelFiles
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models import onnx_export
from medfail.models.spec import ModelSpec

SPEC = ModelSpec(task="classification", target_names=["disc", "bar"], multi_label=True,
                 input_size=(32, 32), in_channels=1)
CONFIG = "tests: [gaussian_noise]\nseverities: [2]\nn_bootstrap: 20\n"


def _model(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net.eval()
    path = tmp / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={"medfail_spec.json": json.dumps(SPEC.to_dict())})
    return path


def _run(tmp: Path, model: Path, data: Path, out: str, runtime: str,
         extra: list[str] | None = None) -> Path:
    (tmp / "suite.yaml").write_text(CONFIG)
    res = CliRunner().invoke(app, [
        "run", "--model", str(model), "--data", str(data), "--task", "classification",
        "--out", str(tmp / out), "--config", str(tmp / "suite.yaml"), "--device", "cpu",
        "--runtime", runtime, "--quiet", *(extra or [])])
    assert res.exit_code == 0, res.output
    return tmp / out


def _runtime(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["model"]["runtime"]


def test_onnxruntime_matches_torch_and_reuses_export(tmp_path: Path, monkeypatch) -> None:
    data = write_png_folder(tmp_path / "data", "classification", n=12)
    model = _model(tmp_path)
    ref = _run(tmp_path, model, data, "torch", "torch")
    ort = _run(tmp_path, model, data, "ort", "onnxruntime")
    info = _runtime(ort)
    assert info["used"] == "onnxruntime" and info["max_abs_diff"] <= 1e-4
    assert _runtime(ref)["used"] == "torch"
    onnx_file = ort / ".medfail" / "onnx" / info["onnx"]
    manifest = json.loads((ort / ".medfail" / "manifest.json").read_text())
    assert f".medfail/onnx/{info['onnx']}" in manifest["files"]
    a, b = pd.read_parquet(ref / "metrics.parquet"), pd.read_parquet(ort / "metrics.parquet")
    assert len(a) == len(b) and len(a) > 0
    np.testing.assert_allclose(b["value"].to_numpy(float), a["value"].to_numpy(float),
                               atol=1e-3, equal_nan=True)

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported")

    # a Ray worker's loader picks the checked export up from the run directory
    worker = ModelFiles((str(model),), "classification", runtime="onnxruntime",
                        onnx_cache=str(ort / ".medfail" / "onnx"))()[0]
    assert worker.forward.onnx_path == str(onnx_file)
    assert not hasattr(ModelFiles((str(model),), "classification")()[0].forward, "onnx_path")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    before = onnx_file.stat().st_mtime_ns
    again = _run(tmp_path, model, data, "ort", "onnxruntime")
    assert _runtime(again)["used"] == "onnxruntime"
    assert onnx_file.stat().st_mtime_ns == before


def test_failed_check_falls_back_to_torch(tmp_path: Path, monkeypatch) -> None:
    data = write_png_folder(tmp_path / "data", "classification", n=8)
    monkeypatch.setattr(onnx_export, "max_abs_diff", lambda *a: 0.5)
    run = _run(tmp_path, _model(tmp_path), data, "ort", "onnxruntime")
    info = _runtime(run)
    assert info["used"] == "torch" and info["max_abs_diff"] == 0.5
    assert "0.5" in info["reason"]


def test_plain_callable_keeps_its_path(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "data", "classification", n=8)
    from medfail.data.datasets import open_dataset

    ds = open_dataset(data, "classification", target_names=["disc", "bar"])
    run = run_suite(brightness_classifier(), ds, tmp_path / "run",
                    SuiteConfig(tests=["gaussian_noise"], severities=[2], n_bootstrap=20),
                    model_info={"name": "fn", "runtime": "onnxruntime"}, progress=False,
                    render=False)
    info = _runtime(run)
    assert info["used"] == "callable" and "callable" in info["reason"]


@pytest.mark.slow
def test_ray_workers_run_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    data = write_png_folder(tmp_path / "data", "classification", n=8)
    model = _model(tmp_path)
    ref = _run(tmp_path, model, data, "torch", "torch")
    ray_run = _run(tmp_path, model, data, "ray", "onnxruntime",
                   ["--executor", "ray", "--workers", "1"])
    assert _runtime(ray_run)["used"] == "onnxruntime"
    a, b = pd.read_parquet(ref / "metrics.parquet"), pd.read_parquet(ray_run / "metrics.parquet")
    np.testing.assert_allclose(b["value"].to_numpy(float), a["value"].to_numpy(float),
                               atol=1e-3, equal_nan=True)
