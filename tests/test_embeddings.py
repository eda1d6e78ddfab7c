"""Penultimate features per test sample (issue 16): ``predictions/embeddings.npz``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from medfail import rundir
from medfail.analysis.analyse import analyse
from medfail.data.datasets import open_dataset
from medfail.engine.embeddings import sample_embeddings
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.loading import _torch_forward
from medfail.models.spec import ModelSpec
from tests.conftest import write_png_folder
from tests.test_engine import threshold_segmenter

FAST = SuiteConfig(tests=["gaussian_noise"], severities=[3], n_bootstrap=20, uncertainty=[],
                   min_slice_n=3, mitigate=False)


def small_classifier() -> tuple[Classifier, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    spec = ModelSpec(task="classification", target_names=["disc", "bar"], multi_label=True,
                     input_size=(32, 32), output="logits")
    return Classifier(spec, _torch_forward(net, "cpu")), net


def test_classifier_embedding_is_the_last_linear_input(tmp_path: Path) -> None:
    folder = write_png_folder(tmp_path / "c", "classification", n=6)
    adapter, net = small_classifier()
    ds = open_dataset(folder, "classification", target_names=["disc", "bar"])
    ids, feats, layer = sample_embeddings(adapter, ds, FAST)  # type: ignore[misc]
    assert "6" in layer and "nn.Linear" in layer and feats.shape == (6, 8)
    # reference: the same input through the layers before the last Linear
    from medfail.models.preprocess import to_tensor

    sample = next(iter(ds.batches(1)))[0]
    x = to_tensor([sample.image], adapter.spec, "cpu", resize=True)
    with torch.no_grad():
        ref = net[:-1](x)[0].numpy()
    assert ids[0] == sample.id
    np.testing.assert_allclose(feats[0], ref, rtol=1e-5, atol=1e-6)


def test_segmenter_embedding_is_the_pooled_bottleneck(tmp_path: Path) -> None:
    folder = write_png_folder(tmp_path / "s", "segmentation", n=4)
    torch.manual_seed(0)
    unet = UNet(2, 1, 2, (4, 8, 16), (2, 2))
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="logits",
                     input_size=(32, 32))
    out = sample_embeddings(Segmenter(spec, _torch_forward(unet, "cpu")),
                            open_dataset(folder, "segmentation"), FAST)
    assert not isinstance(out, str)
    ids, feats, layer = out
    assert len(ids) == 4 and feats.shape[1] >= 16 and "bottleneck" in layer
    assert np.isfinite(feats).all() and feats.std(0).max() > 0


def test_callable_models_are_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = write_png_folder(tmp_path / "s", "segmentation", n=4)
    out = sample_embeddings(threshold_segmenter(), open_dataset(folder, "segmentation"), FAST)
    assert isinstance(out, str) and "not a torch module" in out


def test_run_stores_embeddings_and_analyse_rebuilds_discovery(tmp_path: Path) -> None:
    folder = write_png_folder(tmp_path / "c", "classification", n=24)
    adapter, _ = small_classifier()
    ds = open_dataset(folder, "classification", target_names=["disc", "bar"])
    run = run_suite(adapter, ds, tmp_path / "run", FAST, progress=False, render=False)
    info = json.loads((run / "run.json").read_text())["embeddings"]
    assert info["dim"] == 8 and info["n"] == 24
    with np.load(rundir.embeddings_path(run)) as z:
        assert sorted(z["ids"]) == sorted(pd.read_parquet(
            run / "predictions/index.parquet")["id"])
    before = {n: pd.read_parquet(run / n) for n in (rundir.DISCOVERY,
                                                     rundir.DISCOVERY_FEATURES,
                                                     rundir.LABEL_ISSUES)}
    assert {"id", "half", "error", "error.disc", "emb.group", "emb.pc1"} <= set(before[
        rundir.DISCOVERY_FEATURES].columns)
    for name in before:
        (run / name).unlink()
    analyse(run, progress=False)  # rebuilt from the run directory alone
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), frame)


@pytest.mark.parametrize("n", [1])
def test_empty_like_inputs(tmp_path: Path, n: int) -> None:
    folder = write_png_folder(tmp_path / "c", "classification", n=n)
    adapter, _ = small_classifier()
    out = sample_embeddings(adapter, open_dataset(folder, "classification",
                                                  target_names=["disc", "bar"]), FAST)
    assert not isinstance(out, str) and out[1].shape == (1, 8)


def test_two_class_segmentation_run_discovers_per_class_and_renders(tmp_path: Path) -> None:
    """Errors per foreground class (``error.a``, ``error.b``), and the report renders (the
    checklist's confidences fall back to the per-image mean over classes for the macro
    target)."""
    from PIL import Image

    from medfail.report.html import render_report

    folder = write_png_folder(tmp_path / "d", "segmentation", n=16)
    for i, p in enumerate(sorted((folder / "masks").glob("*.png"))):
        m = np.asarray(Image.open(p)).copy()
        m[:4, :4] = 2
        if i % 2:
            m[m == 1] = 2
        Image.fromarray(m).save(p)
    torch.manual_seed(0)
    spec = ModelSpec(task="segmentation", target_names=["a", "b"], output="logits",
                     input_size=(32, 32))
    run = run_suite(Segmenter(spec, _torch_forward(UNet(2, 1, 3, (4, 8, 16), (2, 2)), "cpu")),
                    open_dataset(folder, "segmentation", target_names=["a", "b"]),
                    tmp_path / "run", FAST, progress=False, render=False)
    feats = pd.read_parquet(run / rundir.DISCOVERY_FEATURES)
    assert {"error.a", "error.b"} <= set(feats.columns)
    render_report(run)
    assert (run / "report.html").exists()
