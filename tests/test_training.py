"""Training that fits the machine: per-batch progress, defaults from the data, early stopping.

Every training here is a few 20-28 px images for 1-4 epochs. Early stopping is driven by a
scripted validation loss (``_mean_loss`` replaced), so which epoch is best is exact, not a
property of a network's noisy optimisation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medfail.models.training as training
from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.data.sample import Sample
from medfail.demo import IMAGE_TASKS, TRAINING
from medfail.models.bundle import read_training_log
from medfail.models.loading import load_model
from medfail.models.networks import ARCHS, TASK_ARCHS
from medfail.models.training import TrainConfig, resolve_config, train
from tests.conftest import write_png_folder

runner = CliRunner()


def _fake(shape: tuple[int, int], n: int = 3) -> list[Sample]:
    return [Sample(id=f"s{i}", image=np.zeros((1, *shape), np.float32), value_range=(0, 255))
            for i in range(n)]


class _ScriptedVal:
    """Stands in for ``training._mean_loss``: returns ``losses`` in turn and snapshots the
    weights the loss was 'measured' on, one snapshot per epoch."""

    def __init__(self, losses: list[float]) -> None:
        self.losses, self.states = list(losses), []

    def __call__(self, module: torch.nn.Module, *args: Any) -> float:
        self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return self.losses[len(self.states) - 1]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batch_progress_bar_with_loss_and_epoch_lines(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bars: list[Any] = []

    class Recording(training.tqdm):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.postfixes: list[dict[str, Any]] = []
            bars.append(self)

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True,
                        **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh, **kwargs)
            self.postfixes.append(kwargs)

    monkeypatch.setattr(training, "tqdm", Recording)
    data = open_dataset(write_png_folder(tmp_path / "d", "classification", n=10, size=20),
                        "classification")
    lines: list[str] = []
    train(data, TrainConfig(task="classification", epochs=2, batch_size=4), tmp_path / "m.pt",
          progress=True, echo=lines.append)
    batch_bars = [b for b in bars if b.unit == "batch"]
    assert [b.desc for b in batch_bars] == ["epoch 1/2", "epoch 2/2"]
    for bar in batch_bars:  # 10 images in batches of 4: 3 updates, each with the running loss
        assert bar.total == 3 and bar.n == 3
        assert len(bar.postfixes) == 3 and all("loss" in p for p in bar.postfixes)
    assert len(lines) == 3  # the setup line, then one line per epoch
    assert lines[0].startswith("classification: 10 images of 20x20 -> resnet18")
    for i, line in enumerate(lines[1:], start=1):
        assert re.fullmatch(rf"epoch {i}/2: loss \d+\.\d{{4}}, \d+\.\d s", line), line


def test_default_architecture_and_size_come_from_the_data(tmp_path: Path) -> None:
    data = open_dataset(write_png_folder(tmp_path / "d", "classification", n=6, size=24),
                        "classification")
    model = tmp_path / "m.pt"
    train(data, TrainConfig(task="classification", epochs=1), model, progress=False)
    log = read_training_log(model)
    assert log["config"]["arch"] == "resnet18" and log["config"]["size"] == 28
    assert log["config"]["batch_size"] == 64
    assert "6 images of 24x24 -> resnet18" in log["setup"] and "at 28x28" in log["setup"]
    assert "median image side 24 px clipped to [28, 128]" in log["setup"]
    adapter = load_model(model, "classification")  # rebuilt from spec.arch + arch_kwargs
    assert adapter.spec.input_size == (28, 28)
    assert adapter.spec.arch_kwargs == {"widen_factor": 0.5, "conv1_t_size": 3,
                                        "conv1_t_stride": 1}
    probs = adapter.predict_proba([np.full((1, 24, 24), 60.0, np.float32)])
    assert probs.shape == (1, 2) and np.isfinite(probs).all()


@pytest.mark.parametrize("task, arch, shape, size", [
    ("classification", None, (28, 28), 28),
    ("classification", None, (20, 20), 28),        # never below the range
    ("classification", None, (40, 56), 56),        # the longer side
    ("classification", None, (512, 384), 128),     # never above it
    ("classification", "densenet121", (28, 28), 32),  # DenseNet121 needs 32 px
    ("segmentation", None, (28, 28), 32),          # rounded up to a multiple of 8, >= 32
    ("segmentation", None, (44, 60), 48),
    ("segmentation", None, (256, 256), 64),
])
def test_size_rule(task: str, arch: str | None, shape: tuple[int, int], size: int) -> None:
    config, why = resolve_config(TrainConfig(task=task, arch=arch), _fake(shape))
    assert config.size == size and why
    assert config.batch_size == (64 if config.arch == "resnet18" else 16)
    assert resolve_config(TrainConfig(task=task, arch=arch, size=64), _fake(shape))[0].size == 64


def test_size_rule_uses_the_median_of_mixed_sizes() -> None:
    samples = _fake((20, 20), 2) + _fake((40, 30), 1) + _fake((90, 90), 2)
    config, why = resolve_config(TrainConfig(task="classification"), samples)
    assert config.size == 40 and "median image side 40 px" in why
    assert training._image_sizes(samples) == "20-90 px (varied sizes)"


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _ScriptedVal([0.9, 0.5, 0.6, 0.7, 0.4, 0.3])  # best at 2, then 2 epochs worse
    monkeypatch.setattr(training, "_mean_loss", scripted)
    d = write_png_folder(tmp_path / "d", "classification", n=6, size=20)
    model = tmp_path / "m.pt"
    train(open_dataset(d, "classification"), TrainConfig(task="classification", epochs=6,
          patience=2), model, val_dataset=open_dataset(d, "classification"), progress=False)
    log = read_training_log(model)
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]  # stopped: 3, 4 not better
    assert log["best_epoch"] == 2 and log["best_val_loss"] == 0.5
    assert log["stop_reason"].startswith("early stop after epoch 4") and log["restored_best_epoch"]
    saved = torch.load(model, weights_only=True)["state_dict"]
    assert _same_weights(saved, scripted.states[1])  # the weights of epoch 2 ...
    assert not _same_weights(saved, scripted.states[3])  # ... not the last ones


def test_patience_off_or_no_val_runs_every_epoch_and_keeps_the_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = _ScriptedVal([0.5, 0.6, 0.7])
    monkeypatch.setattr(training, "_mean_loss", scripted)
    d = write_png_folder(tmp_path / "d", "classification", n=6, size=20)
    ds = open_dataset(d, "classification")
    model = tmp_path / "m.pt"
    train(ds, TrainConfig(task="classification", epochs=3, patience=None), model,
          val_dataset=ds, progress=False)  # the demo's setting
    log = read_training_log(model)
    assert len(log["epochs"]) == 3 and log["best_epoch"] == 1 and not log["restored_best_epoch"]
    assert _same_weights(torch.load(model, weights_only=True)["state_dict"], scripted.states[2])
    train(ds, TrainConfig(task="classification", epochs=2, patience=1), model, progress=False)
    log = read_training_log(model)
    assert len(log["epochs"]) == 2 and log["best_epoch"] is None
    assert log["stop_reason"] == "ran all 2 epochs (no --val)"


def test_cli_patience(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(write_png_folder(tmp_path / "d", "classification", n=6, size=20))
    args = ["train", "--task", "classification", "--data", d, "--val", d, "--epochs", "4",
            "--quiet", "--out"]
    monkeypatch.setattr(training, "_mean_loss", _ScriptedVal([0.5, 0.6, 0.4, 0.3]))
    result = runner.invoke(app, [*args, str(tmp_path / "a.pt"), "--patience", "1"])
    assert result.exit_code == 0, result.output
    assert "early stop after epoch 2" in result.output and "epoch 3/4" not in result.output
    assert len(read_training_log(tmp_path / "a.pt")["epochs"]) == 2
    monkeypatch.setattr(training, "_mean_loss", _ScriptedVal([0.5, 0.6, 0.4, 0.3]))
    result = runner.invoke(app, [*args, str(tmp_path / "b.pt"), "--patience", "0"])
    assert result.exit_code == 0, result.output
    assert len(read_training_log(tmp_path / "b.pt")["epochs"]) == 4
    assert result.output.startswith("classification: 6 images of 20x20 -> resnet18")


@pytest.mark.parametrize("extra, expected", [
    (["--patience", "-1"], "patience must be 0 (off) or more"),
    (["--arch", "unet"], "arch 'unet' cannot train classification; choose resnet18 or "
                         "densenet121"),
    (["--arch", "vgg"], "arch 'vgg' is not an architecture for classification"),
    (["--arch", "densenet121", "--size", "28"], "densenet121 needs an input size of at least 32"),
    (["--batch-size", "0"], "batch size must be at least 1"),
])
def test_cli_bad_training_options(extra: list[str], expected: str, tmp_path: Path) -> None:
    d = str(write_png_folder(tmp_path / "d", "classification", n=4, size=20))
    result = runner.invoke(app, ["train", "--task", "classification", "--data", d, "--out",
                                 str(tmp_path / "m.pt"), "--quiet", *extra])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert expected in result.output, result.output
    assert not (tmp_path / "m.pt").exists()


def test_cli_out_must_be_a_writable_file_path_before_training(tmp_path: Path) -> None:
    """--out a folder, or under a file, is one error before any training (was: an
    IsADirectoryError / FileExistsError traceback after the last epoch)."""
    d = str(write_png_folder(tmp_path / "d", "classification", n=4, size=20))
    (tmp_path / "models").mkdir()
    (tmp_path / "taken.txt").write_text("mine")
    for out, expected in ((tmp_path / "models", "is a folder; --out names the model file"),
                          (tmp_path / "taken.txt" / "m.pt", "taken.txt is a file")):
        result = runner.invoke(app, ["train", "--task", "classification", "--data", d, "--out",
                                     str(out), "--quiet", "--epochs", "1"])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and expected in result.output, result.output
        assert "checking" not in result.output and "epoch" not in result.output
    assert (tmp_path / "taken.txt").read_text() == "mine"


def test_segmentation_patch_size_must_fit_the_unet() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig(task="segmentation", size=36)


def test_help_lists_every_architecture() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert set(ARCHS) == {a for archs in TASK_ARCHS.values() for a in archs}
    for arch in ARCHS:
        assert arch in text
    assert "--patience" in text and "median image side" in text


def test_demo_keeps_its_densenet_classifier() -> None:
    cls = TRAINING["classification"]
    assert (cls.arch, cls.size, cls.batch_size, cls.lr, cls.patience) == (
        "densenet121", 64, 16, 1e-3, None)
    assert all(TRAINING[t].patience is None and TRAINING[t].size == 64
               and TRAINING[t].batch_size == 16 for t in IMAGE_TASKS)
    vol = TRAINING["volumetric"]  # the 3D U-Net: 32^3 patches, every epoch run
    assert (vol.arch, vol.size, vol.patience) == ("unet", 32, None)
