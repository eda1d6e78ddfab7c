"""The Ray executor writes exactly what the local executor writes (local Ray, 2 CPUs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_png_folder
from test_engine import FAST, brightness_classifier
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.engine.executors import ModelFiles, shards
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.models.adapters import Segmenter
from medfail.models.loading import load_model
from medfail.models.spec import ModelSpec

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medfail[ray]')")
TABLES = ("metrics.parquet", "per_sample.parquet", "calibration.parquet", "ranking.parquet",
          "mitigations.parquet")


#: What the test's local Ray may use, whatever the machine's free memory: a fixed 128 MiB
#: object store (the payloads here are a few MB) and Ray's out-of-memory monitor off. With the
#: monitor on, Ray kills workers once *node* memory passes 95 %, which on a busy shared machine
#: depends on other processes, not on this test.
RAY_TEST_ENV = {"RAY_memory_monitor_refresh_ms": "0"}
RAY_OBJECT_STORE_BYTES = 128 * 1024**2


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_TEST_ENV.items():  # read by the raylet when it starts
            mp.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=RAY_OBJECT_STORE_BYTES)
        yield
        ray.shutdown()


def test_local_ray_is_bounded_and_not_memory_monitored() -> None:
    """The fixture's Ray has the fixed object store and no out-of-memory killer."""
    assert 0 < ray.cluster_resources()["object_store_memory"] <= RAY_OBJECT_STORE_BYTES
    refresh = ray.get(ray.remote(lambda: __import__("os").environ.get(
        "RAY_memory_monitor_refresh_ms")).remote())
    assert refresh == "0"


class Threshold(torch.nn.Module):
    """Foreground probability = sigmoid((x - 130) / 10), scriptable (so it does not pickle)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)


def torchscript_segmenter(path: Path) -> Path:
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    torch.jit.save(torch.jit.script(Threshold()), str(path),
                   _extra_files={"medfail_spec.json": json.dumps(spec.to_dict())})
    return path


def assert_same_run(a: Path, b: Path) -> None:
    for name in TABLES:  # time_ratio (mitigation cost) is wall-clock, the only expected change
        left, right = (pd.read_parquet(r / name).drop(columns="time_ratio", errors="ignore")
                       for r in (a, b))
        pd.testing.assert_frame_equal(left, right)
    files = sorted(p.name for p in (a / "predictions").iterdir())
    assert files == sorted(p.name for p in (b / "predictions").iterdir())
    for name in files:
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a / "predictions" / name),
                                          pd.read_parquet(b / "predictions" / name))
        else:
            left, right = np.load(a / "predictions" / name), np.load(b / "predictions" / name)
            assert list(left) == list(right)  # same sample order
            for sid in left:
                np.testing.assert_array_equal(left[sid], right[sid])


def test_shards_are_whole_batches() -> None:
    assert shards(16, 4, 2) == [(0, 8), (8, 16)]
    assert shards(16, 3, 2) == [(0, 9), (9, 16)]
    assert shards(5, 16, 4) == [(0, 5)]


def test_segmentation_ray_equals_local(tmp_path: Path) -> None:
    """Shards of 2 batches on 2 actors, TorchScript model rebuilt from its file per worker,
    shift data, TTA, a not-applicable method and the morphology mitigation (run locally)."""
    ds = open_dataset(write_png_folder(tmp_path / "seg", "segmentation"), "segmentation")
    cal = open_dataset(write_png_folder(tmp_path / "cal", "segmentation", seed=1), "segmentation")
    shift = open_dataset(write_png_folder(tmp_path / "site", "segmentation", seed=2),
                         "segmentation")
    model = torchscript_segmenter(tmp_path / "threshold.pt")
    adapter = load_model(model, "segmentation")
    config = SuiteConfig(tests=["gaussian_noise", "contrast"], severities=[1, 3], batch_size=4,
                         **FAST)
    runs = {}
    for executor in ("local", "ray"):
        runs[executor] = run_suite(
            adapter, ds, tmp_path / executor, config, progress=False, render=False,
            calibration=cal, shift=shift, executor=executor, ray_workers=2,
            model_loader=ModelFiles((str(model),), "segmentation"))
    assert_same_run(runs["local"], runs["ray"])
    info = json.loads((runs["ray"] / "run.json").read_text())
    assert "mc_dropout" in info["not_applicable"]
    assert info["mitigation"]["worst_condition"] in info["conditions"]
    assert {"shift_data", f"morphology|{info['mitigation']['worst_condition']}"} <= set(
        info["conditions"])


def test_classification_ray_equals_local_with_pickled_adapter(tmp_path: Path) -> None:
    """Uneven shards (batches of 3), the closure model pickled to the workers."""
    folder = write_png_folder(tmp_path / "cls", "classification")
    ds = open_dataset(folder, "classification", target_names=["disc", "bar"])
    config = SuiteConfig(tests=["gaussian_noise", "jpeg"], severities=[2], batch_size=3, **FAST)
    runs = [run_suite(brightness_classifier(), ds, tmp_path / ex, config, progress=False,
                      render=False, executor=ex, ray_workers=2) for ex in ("local", "ray")]
    assert_same_run(*runs)


def test_unpicklable_model_without_loader_is_a_clear_error(tmp_path: Path) -> None:
    ds = open_dataset(write_png_folder(tmp_path / "seg", "segmentation", n=4), "segmentation")
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    scripted = torch.jit.script(Threshold())
    config = SuiteConfig(tests=["jpeg"], severities=[1], uncertainty=[], mitigate=False, **FAST)
    with pytest.raises(MedfailInputError, match="model_loader"):
        run_suite(Segmenter(spec, scripted), ds, tmp_path / "run", config, progress=False,
                  render=False, executor="ray")
    with pytest.raises(MedfailInputError, match="unknown executor 'dask'"):
        run_suite(Segmenter(spec, scripted), ds, tmp_path / "run", config, progress=False,
                  render=False, executor="dask")


def test_cli_passes_executor_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_png_folder(tmp_path / "seg", "segmentation", n=4)
    model = torchscript_segmenter(tmp_path / "threshold.pt")
    seen: dict[str, Any] = {}

    def fake_run_suite(adapter: Any, dataset: Any, out: Path, config: Any, **kw: Any) -> Path:
        seen.update(kw, device=adapter.device)
        return out

    monkeypatch.setattr("medfail.engine.runner.run_suite", fake_run_suite)
    result = CliRunner().invoke(app, [
        "run", "--model", str(model), "--data", str(folder), "--task", "segmentation",
        "--out", str(tmp_path / "run"), "--executor", "ray", "--address", "auto",
        "--workers", "3", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (seen["executor"], seen["ray_address"], seen["ray_workers"]) == ("ray", "auto", 3)
    assert seen["device"] == "cpu"
    loader = seen["model_loader"]
    assert loader.refs == (str(model.resolve()),) and loader.device == "cpu"
    assert [m.name for m in loader()] == ["threshold.pt"]
