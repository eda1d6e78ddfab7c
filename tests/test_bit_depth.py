"""Bit depth (issue 10 item 2): the same picture as 8-bit PNG, 16-bit PNG and 16-bit TIFF reaches a
model identically; the training intensity summary and the run's out-of-range warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from medfail.data.datasets import open_dataset
from medfail.data.readers import read_image
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.metrics.classification import auroc
from medfail.models.adapters import Classifier
from medfail.models.bundle import module_from_bundle
from medfail.models.intensity import check_intensity, summarise
from medfail.models.loading import load_model
from medfail.models.spec import ModelSpec

SIZE = 16
TRAINED_ON_8BIT = {"p01": [20.0], "p99": [230.0], "min": [0.0], "max": [255.0]}


def _pictures(n: int = 12, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """8-bit grey pictures; odd ones (label 1) are brighter on average."""
    rng = np.random.default_rng(seed)
    pics, labels = [], []
    for i in range(n):
        label = i % 2
        base = 150 if label else 70
        pics.append(np.clip(rng.normal(base, 20, (SIZE, SIZE)), 0, 255).astype(np.uint8))
        labels.append(label)
    return pics, labels


def _save(pic: np.ndarray, path: Path, kind: str) -> None:
    """``kind``: png8, png16 (x257, the standard widening), png16_shift (x256, ``<< 8``),
    tif16 (x257), tif8, npy16 (x257 counts in a .npy, which keeps its values)."""
    wide = pic.astype(np.uint16) * 257
    if kind == "png8":
        Image.fromarray(pic).save(path)
    elif kind == "png16":
        Image.fromarray(wide).save(path)
    elif kind == "png16_shift":
        Image.fromarray(pic.astype(np.uint16) << 8).save(path)
    elif kind == "tif16":
        tifffile.imwrite(path, wide)
    elif kind == "tif8":
        tifffile.imwrite(path, pic)
    elif kind == "npy16":
        np.save(path, wide)
    else:  # pragma: no cover
        raise ValueError(kind)


SUFFIX = {"png8": ".png", "png16": ".png", "png16_shift": ".png", "tif16": ".tif",
          "tif8": ".tif", "npy16": ".npy"}


def _folder(root: Path, kind: str, pics: list[np.ndarray], labels: list[int]) -> Path:
    (root / "images").mkdir(parents=True)
    for i, pic in enumerate(pics):
        _save(pic, root / "images" / f"case{i:02d}{SUFFIX[kind]}", kind)
    pd.DataFrame({"id": [f"case{i:02d}" for i in range(len(pics))], "bright": labels}).to_csv(
        root / "labels.csv", index=False)
    return root


class MeanBrightness(nn.Module):
    """Logit = 4 x mean of the normalised image: a fixed, deterministic classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * x.mean(dim=(1, 2, 3)).unsqueeze(1)


def _spec(intensity: dict[str, list[float]] | None = TRAINED_ON_8BIT) -> ModelSpec:
    """A model trained on 8-bit data: normalisation in 0..255 units."""
    return ModelSpec(task="classification", target_names=["bright"], multi_label=True,
                     input_size=(SIZE, SIZE), normalisation={"mean": [110.0], "std": [40.0]},
                     intensity=intensity)


def _torchscript(tmp_path: Path, spec: ModelSpec) -> Path:
    path = tmp_path / "bright.ts.pt"
    scripted = torch.jit.trace(MeanBrightness().eval(), torch.zeros(1, 1, SIZE, SIZE))
    torch.jit.save(scripted, str(path),
                   _extra_files={"medfail_spec.json": json.dumps(spec.to_dict())})
    return path


# ---------------------------------------------------------------------------- readers


@pytest.mark.parametrize("kind,atol", [("png16", 1e-4), ("tif16", 1e-4), ("tif8", 0.0),
                                       ("png16_shift", 1.0)])
def test_8_and_16_bit_copies_read_the_same(tmp_path: Path, kind: str, atol: float) -> None:
    pic = _pictures(2)[0][1]
    _save(pic, tmp_path / "a.png", "png8")
    _save(pic, tmp_path / f"b{SUFFIX[kind]}", kind)
    ref, other = read_image(tmp_path / "a.png"), read_image(tmp_path / f"b{SUFFIX[kind]}")
    assert ref.value_range == other.value_range == (0.0, 255.0)
    np.testing.assert_allclose(other.array, ref.array, rtol=0, atol=atol)  # within 8-bit steps
    assert float(np.abs(other.array - ref.array).max()) <= atol


def test_npy_keeps_its_counts(tmp_path: Path) -> None:
    """.npy states no bit depth (it may hold HU or counts): values are kept as stored."""
    pic = _pictures(2)[0][1]
    _save(pic, tmp_path / "c.npy", "npy16")
    r = read_image(tmp_path / "c.npy")
    np.testing.assert_array_equal(r.array[0], pic.astype(np.float32) * 257)
    assert r.integer and r.value_range == (float(pic.min()) * 257, float(pic.max()) * 257)


# ---------------------------------------------------------------------------- model outputs


def test_same_probabilities_through_torchscript(tmp_path: Path) -> None:
    pics, labels = _pictures(8)
    model = load_model(_torchscript(tmp_path, _spec()), "classification")
    probs = {}
    for kind in ("png8", "png16", "tif16"):
        data = open_dataset(_folder(tmp_path / kind, kind, pics, labels), "classification",
                            target_names=["bright"])
        probs[kind] = model.predict_proba([s.image for s in data])
    assert probs["png8"].std() > 0.05  # the model does separate the pictures
    np.testing.assert_allclose(probs["png16"], probs["png8"], atol=1e-5)
    np.testing.assert_allclose(probs["tif16"], probs["png8"], atol=1e-5)


def test_16bit_png_keeps_auroc_and_no_warning(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Old code: 16-bit counts saturate the 8-bit-trained model, every probability 1, AUROC 0.5."""
    pics, labels = _pictures(12)
    adapter = Classifier(_spec(), MeanBrightness().eval(), name="bright")
    for kind in ("png8", "png16"):
        data = open_dataset(_folder(tmp_path / kind, kind, pics, labels), "classification",
                            target_names=["bright"])
        probs = adapter.predict_proba([s.image for s in data])[:, 0]
        assert auroc(np.array(labels), probs) == 1.0, kind
        assert probs.max() < 0.999
    config = SuiteConfig(tests=["gaussian_noise"], severities=[1], n_bootstrap=20,
                         uncertainty=[], mitigate=False, min_slice_n=2)
    run = run_suite(adapter, data, tmp_path / "run", config, progress=False, render=False)
    metrics = pd.read_parquet(run / "metrics.parquet")
    clean = metrics[(metrics["condition"] == "clean") & (metrics["metric"] == "auroc")
                    & (metrics["slice"] == "all")]["value"]
    assert float(clean.iloc[0]) == 1.0
    info = json.loads((run / "run.json").read_text())["intensity"]
    assert info["warning"] is None and info["reference"] == "model spec intensity"
    assert "warning:" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- the warning


def test_warning_for_16bit_counts_in_run_json_and_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pics, labels = _pictures(8)
    data = open_dataset(_folder(tmp_path / "counts", "npy16", pics, labels), "classification",
                        target_names=["bright"])
    adapter = Classifier(_spec(), MeanBrightness().eval(), name="bright")
    config = SuiteConfig(tests=["gaussian_noise"], severities=[1], n_bootstrap=20,
                         uncertainty=[], mitigate=False, min_slice_n=2)
    run = run_suite(adapter, data, tmp_path / "run", config, progress=False, render=False)
    info = json.loads((run / "run.json").read_text())["intensity"]
    assert info["warning"] and "outside the model's training data" in info["warning"]
    assert info["outside_fraction"][0] > 0.5 and info["scale_ratio"][0] > 10
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "bit depth" in lines[0]


def test_warning_from_normalisation_for_old_model_files(tmp_path: Path) -> None:
    """A spec without ``intensity`` (older model files) is checked against its normalisation."""
    pics, labels = _pictures(6)
    counts = open_dataset(_folder(tmp_path / "c", "npy16", pics, labels), "classification",
                          target_names=["bright"])
    eight = open_dataset(_folder(tmp_path / "e", "png8", pics, labels), "classification",
                         target_names=["bright"])
    spec = _spec(intensity=None)
    fired = check_intensity(spec, counts, warn=False)
    assert fired["warning"] and fired["reference"].startswith("model normalisation")
    assert check_intensity(spec, eight, warn=False)["warning"] is None
    unit = ModelSpec(task="classification", target_names=["bright"])  # nothing to compare with
    assert check_intensity(unit, eight, warn=False)["warning"] is None


def test_warning_for_float_unit_images_against_8bit_training(tmp_path: Path) -> None:
    pics, labels = _pictures(6)
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    for i, pic in enumerate(pics):
        np.save(root / "images" / f"case{i:02d}.npy", pic.astype(np.float32) / 255)
    pd.DataFrame({"id": [f"case{i:02d}" for i in range(6)], "bright": labels}).to_csv(
        root / "labels.csv", index=False)
    info = check_intensity(_spec(), open_dataset(root, "classification"), warn=False)
    assert info["warning"] and info["scale_ratio"][0] < 0.1


def test_no_warning_for_8bit_content_in_16bit_files(tmp_path: Path) -> None:
    """A 16-bit TIFF holding 0..255 values used to span 0.4 % of its scale (and warn): its
    effective bit depth (8) now sets the stress scale (tests/test_effective_bit_depth.py), so
    it fills it like its 8-bit copy, and the model input stays the same."""
    pics, labels = _pictures(6)
    root = tmp_path / "low"
    (root / "images").mkdir(parents=True)
    for i, pic in enumerate(pics):
        tifffile.imwrite(root / "images" / f"case{i:02d}.tif", pic.astype(np.uint16))
    pd.DataFrame({"id": [f"case{i:02d}" for i in range(6)], "bright": labels}).to_csv(
        root / "labels.csv", index=False)
    unit = ModelSpec(task="classification", target_names=["bright"])
    data = open_dataset(root, "classification")
    info = check_intensity(unit, data, warn=False)
    eight = open_dataset(_folder(tmp_path / "e", "png8", pics, labels), "classification")
    assert info["warning"] is None
    assert info["test_range_fill"] == pytest.approx(
        check_intensity(unit, eight, warn=False)["test_range_fill"], rel=1e-5)
    assert data.load("case00").value_range == pytest.approx((0.0, 255 * 255 / 65535))
    np.testing.assert_allclose(data.load("case00").image * 65535 / 255, pics[0][None], atol=1e-3)


# ---------------------------------------------------------------------------- model spec


def test_spec_intensity_optional_and_validated() -> None:
    old = {"task": "classification", "target_names": ["a"], "in_channels": 1,
           "normalisation": {"mean": [100.0], "std": [50.0]}, "output": "logits"}
    assert ModelSpec.from_dict(old).intensity is None  # older model files still load
    spec = _spec()
    assert ModelSpec.from_dict(spec.to_dict()).intensity == TRAINED_ON_8BIT
    with pytest.raises(ValueError, match="intensity"):
        ModelSpec.from_dict({**old, "intensity": {"p01": [0.0], "p99": [1.0]}})
    with pytest.raises(ValueError, match="1 finite number"):
        ModelSpec.from_dict({**old, "intensity": {**TRAINED_ON_8BIT, "max": [1.0, 2.0]}})


def test_summarise_percentiles_and_extremes() -> None:
    images = [np.arange(100, dtype=np.float32).reshape(1, 10, 10) + 100 * k for k in range(3)]
    s = summarise(images, 3)  # grey images given to an RGB model are repeated
    assert s["min"] == [0.0] * 3 and s["max"] == [299.0] * 3
    assert s["p01"][0] == pytest.approx(2.99, abs=0.01)
    assert s["p99"][0] == pytest.approx(296.01, abs=0.01)


def test_training_stores_intensity(tmp_path: Path) -> None:
    from medfail.models.training import TrainConfig, train

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pics, _ = _pictures(3)
    for i, pic in enumerate(pics):
        Image.fromarray(pic).save(root / "images" / f"c{i}.png")
        Image.fromarray((pic > 120).astype(np.uint8)).save(root / "masks" / f"c{i}.png")
    path = train(open_dataset(root, "segmentation"),
                 TrainConfig(task="segmentation", size=16, epochs=1, patches_per_image=1),
                 tmp_path / "m.pt", progress=False)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec, _ = module_from_bundle(payload, path)
    assert spec.intensity is not None
    assert spec.intensity["min"] == [float(min(p.min() for p in pics))]
    assert spec.intensity["max"] == [float(max(p.max() for p in pics))]
    assert 0 < spec.intensity["p01"][0] < spec.intensity["p99"][0] < 255
