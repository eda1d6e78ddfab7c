"""Real offline medical images through the suite: pydicom's CT slice (windowing shift on HU) and
stardist's DSB2018 nuclei image with its instance masks (segmentation stress and slices)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec
from tests.conftest import dsb2018


def threshold_model(level: float, scale: float) -> Segmenter:
    """Foreground probability sigmoid((x - level) / scale) on native intensities."""
    spec = ModelSpec(task="segmentation", target_names=["foreground"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - level) / scale)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


def test_pydicom_ct_through_windowing_shift(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom import examples

    root = tmp_path / "ct"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(6):
        ds = examples.ct
        arr = np.roll(ds.pixel_array, shift=8 * k, axis=1)
        ds.PixelData = arr.astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(root / "images" / f"slice{k}.dcm")
        hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        Image.fromarray((hu > 100).astype(np.uint8)).save(root / "masks" / f"slice{k}.png")
    data = open_dataset(root, "segmentation")
    assert data.load("slice0").modality == "CT"
    assert data.load("slice0").image.min() < -500  # Hounsfield units, not raw values
    config = SuiteConfig(tests=["ct_window", "gaussian_noise"], n_bootstrap=50)
    run = run_suite(threshold_model(100.0, 20.0), data, tmp_path / "run", config,
                    progress=False)
    metrics = pd.read_parquet(run / "metrics.parquet")
    dice = metrics[(metrics["metric"] == "dice") & (metrics["slice"] == "all")
                   ].set_index("condition")["value"]
    assert dice["clean"] > 0.99  # the model is the rule that made the masks
    assert dice[["ct_window@1", "ct_window@2", "ct_window@3"]].min() < dice["clean"]
    # privacy: the DICOM patient name never reaches any output file
    patient = str(pydicom.dcmread(root / "images" / "slice0.dcm").PatientName)
    for path in run.rglob("*"):
        if path.is_file():
            assert patient.encode() not in path.read_bytes(), path


def test_stardist_nuclei_segmentation_stress_and_slices(tmp_path: Path) -> None:
    image, instances = dsb2018()
    assert len(np.unique(instances)) - 1 >= 100  # the real instance annotation
    root = tmp_path / "nuclei"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):  # four 256x256 tiles of the 512x512 image, native 16-bit
        r, c = divmod(i, 2)
        tile = np.s_[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256]
        tifffile.imwrite(root / "images" / f"tile{i}.tif", image[tile])
        mask = (instances[tile] > 0).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"tile{i}.png")
    data = open_dataset(root, "segmentation")
    config = SuiteConfig(tests=["gaussian_blur", "pixelate", "resolution_shift"],
                         severities=[1, 3], n_bootstrap=50, min_slice_n=2)
    unit = 255 / 65535  # 16-bit TIFF pixels are read on the 8-bit full scale (docs/data.md)
    threshold = float(np.percentile(image, 60)) * unit
    run = run_suite(threshold_model(threshold, 5.0 * unit), data, tmp_path / "run", config,
                    progress=False)
    # the tile holds 0..235 in a 16-bit file: its effective bit depth (8) sets the stress scale,
    # so the "span only" warning no longer fires (docs/data.md, Intensities)
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["intensity"]["warning"] is None
    assert run_info["data"]["bit_depth"]["depths"] == [
        {"bits": 16, "effective_bits": 8, "raw_max": int(image.max()), "n_images": 4,
         "value_range": [0.0, pytest.approx(255 * 255 / 65535)]}]
    metrics = pd.read_parquet(run / "metrics.parquet")
    clean = metrics[(metrics["condition"] == "clean") & (metrics["slice"] == "all")
                    ].set_index("metric")["value"]
    assert clean["dice"] > 0.5 and 0 < clean["lesion_sensitivity"] <= 1
    assert {"gt.objects=2+", "gt.location=central"} & set(metrics["slice"])
    stress = metrics[~metrics["family"].isin(["uncertainty", "mitigation"])]
    assert stress["condition"].nunique() == 7
    assert np.isfinite(stress.loc[stress["slice"] == "all", "value"]).all()
    assert (run / "report.html").exists()
