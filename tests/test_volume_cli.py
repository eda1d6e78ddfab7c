"""Volumes as users bring them through the two commands: `medfail train` then `medfail run` on a
3D NIfTI folder and on the same scans as DICOM-series folders (CT, spacing 0.7 x 0.7 x 2.5 mm,
LPS slices in shuffled file order). Both formats must reach the model and the metrics as the same
voxels with the same spacing, so the two runs' per-sample metrics are identical."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medfail.cli import app
from medfail.models.loading import load_model
from tests.test_volumes_io import _lps_nifti_affine, write_dicom_series

SPACING = (0.7, 0.7, 2.5)
ORIGIN = (-40.0, -30.0, 100.0)
SHAPE = (24, 20, 12)  # (x, y, z) in LPS voxel order, as the DICOM writer takes it


def _scan(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (even values: representable with the writer's slopes 1 and 2) with one bright
    ellipsoidal lesion (+ noise), and its 0/1 mask, both (x, y, z) LPS."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    centre = [rng.uniform(7, n - 7) for n in SHAPE[:2]] + [rng.uniform(4, SHAPE[2] - 4)]
    radii = (rng.uniform(3, 5), rng.uniform(3, 5), rng.uniform(1.2, 2.0))  # voxels (z: 2.5 mm)
    mask = (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
            <= 1).astype(np.uint8)
    hu = rng.normal(40, 15, SHAPE) + 160 * mask
    return (np.round(hu / 2) * 2).astype(np.float64), mask


def _folders(root: Path, n: int) -> tuple[Path, Path]:
    """The same n scans as a NIfTI folder and as a DICOM-series folder (masks NIfTI in both)."""
    affine = _lps_nifti_affine(SPACING, ORIGIN)
    nifti, dicom = root / "nifti", root / "dicom"
    for folder in (nifti, dicom):
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
    for i in range(n):
        hu, mask = _scan(i)
        nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), nifti / "images" / f"c{i}.nii.gz")
        write_dicom_series(dicom / "images" / f"c{i}", hu, SPACING, ORIGIN, seed=i)
        for folder in (nifti, dicom):
            nib.save(nib.Nifti1Image(mask, affine), folder / "masks" / f"c{i}.nii.gz")
    return nifti, dicom


def _invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_nifti_and_dicom_series_folders_through_train_and_run(tmp_path: Path) -> None:
    nifti, dicom = _folders(tmp_path / "train", 4)
    test_nifti, test_dicom = _folders(tmp_path / "test", 3)
    models = {}
    for name, data in (("nifti", nifti), ("dicom", dicom)):
        models[name] = tmp_path / f"unet3d_{name}.pt"
        _invoke("train", "--task", "segmentation", "--data", str(data), "--out",
                str(models[name]), "--epochs", "1", "--size", "16", "--quiet")
    weights = [load_model(m).forward.module.state_dict() for m in models.values()]
    for key, value in weights[0].items():  # the same voxels and spacing -> the same training
        assert torch.equal(value, weights[1][key]), key
    model = models["dicom"]
    spec = load_model(model).spec.to_dict()
    assert spec["spatial_dims"] == 3 and len(spec["input_size"]) == 3
    assert spec["spacing"] == pytest.approx(SPACING)  # the training volumes' median spacing
    suite = tmp_path / "suite.yaml"
    suite.write_text("tests: [gaussian_noise, slice_thickness]\nseverities: [2]\n"
                     "uncertainty: []\nmitigate: false\nn_bootstrap: 20\n")
    runs = {}
    for name, data in (("nifti", test_nifti), ("dicom", test_dicom)):
        out = tmp_path / f"run_{name}"
        _invoke("run", "--model", str(model), "--data", str(data), "--task", "segmentation",
                "--out", str(out), "--config", str(suite))
        info = json.loads((out / "run.json").read_text())
        assert info["data"]["spatial_dims"] == 3
        assert info["metric_units"]["hd95"]["unit"] == "mm"
        index = pd.read_parquet(out / "predictions" / "index.parquet")
        assert [tuple(v) for v in index["spacing"]] == [pytest.approx(SPACING)] * 3
        runs[name] = pd.read_parquet(out / "per_sample.parquet").sort_values(
            ["condition", "id", "target", "metric"]).reset_index(drop=True)
    assert {"clean", "gaussian_noise@2", "slice_thickness@2"} <= set(runs["nifti"]["condition"])
    pd.testing.assert_frame_equal(runs["nifti"], runs["dicom"])  # same voxels, same numbers
