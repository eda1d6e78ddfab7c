"""A run directory an outsider can check (issue 11 items 7-9): per-metric tolerances and units in
run.json and the report, the ground truth and spacing stored with the predictions, the
Euclidean calibration band, and the docs/run_directory.md snippet that recomputes the per-image
metrics with MONAI from the run directory alone."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance
from PIL import Image
from scipy import ndimage

from medfail.analysis.segmentation_calibration import add_pixel_bins, band_mask, pixel_bin_table
from medfail.data.datasets import open_dataset
from medfail.engine.predictions import label_map
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.metrics.segmentation import hd95
from medfail.models.adapters import PromptableSegmenter, Segmenter
from medfail.models.spec import ModelSpec
from tests.conftest import box_promptable, write_png_folder
from tests.test_mask_modes import instance_folder, mask_folder, square

ROOT = Path(__file__).resolve().parents[1]
FAST = {"tests": ["gaussian_noise"], "severities": [3], "n_bootstrap": 10, "mitigate": False}
#: documented agreement with MONAI (docs/run_directory.md, docs/metrics.md)
TOLERANCE = {"dice": 1e-6, "nsd": 1e-6, "hd95": 2e-5}


def segmenter(classes: int = 1) -> Segmenter:
    """Bright pixels are foreground; with several classes, class k where the pixel is brighter
    than 100 + 40 k (so a two-class mask's brighter square is class 2)."""
    spec = ModelSpec(task="segmentation", target_names=[f"c{k}" for k in range(1, classes + 1)],
                     output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if classes == 1:
            fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
            return torch.cat([1 - fg, fg], dim=1)
        logits = torch.cat([torch.zeros_like(x[:, :1])] + [
            (x[:, :1] - (100.0 + 40.0 * k)) / 5.0 * k for k in range(1, classes + 1)], dim=1)
        return torch.softmax(logits, dim=1)

    return Segmenter(spec, forward)


def with_spacing(root: Path, spacing: float | str) -> Path:
    meta = pd.read_csv(root / "metadata.csv")
    meta["pixel_spacing"] = spacing
    meta.to_csv(root / "metadata.csv", index=False)
    return root


def snippet() -> str:
    """The recomputation snippet of docs/run_directory.md, as published."""
    text = (ROOT / "docs" / "run_directory.md").read_text()
    found = re.search(r"<!-- snippet: recompute-per-image[^>]*-->\n```python\n(.*?)```", text,
                      re.S)
    assert found, "docs/run_directory.md lost its recomputation snippet"
    return found.group(1)


def run_snippet(run: Path, condition: str) -> dict[str, float]:
    """Run the docs snippet on ``run`` (its ``run = ...`` and ``condition = ...`` lines swapped
    for these); returns its ``diff`` after checking that it compared every (image, class) pair
    for Dice and some for NSD and HD95."""
    code = snippet()
    code = re.sub(r'^run = ".*?"', f"run = {str(run)!r}", code, count=1, flags=re.M)
    code = re.sub(r'^condition = ".*?"', f"condition = {condition!r}", code, count=1,
                  flags=re.M)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/run_directory.md", "exec"), namespace)
    n, per_sample = namespace["n"], pd.read_parquet(run / "per_sample.parquet")
    dice = per_sample[(per_sample["condition"] == condition) & (per_sample["metric"] == "dice")]
    assert n["dice"] == len(dice) and n["nsd"] == n["hd95"] >= 1
    return namespace["diff"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def brute_bf1(t: np.ndarray, p: np.ndarray, tol: float) -> float:
    """Boundary F1 in px from MONAI's edges and surface distances (no spacing)."""
    if not t.any() and not p.any():
        return 1.0
    if not t.any() or not p.any():
        return 0.0
    e_pred, e_true = get_mask_edges(p, t, crop=True)
    prec = np.mean(np.asarray(get_surface_distance(e_pred, e_true)) <= tol)
    rec = np.mean(np.asarray(get_surface_distance(e_true, e_pred)) <= tol)
    return 0.0 if prec + rec == 0 else float(2 * prec * rec / (prec + rec))


# --------------------------------------------------------------------------- units (item 7)


def test_metric_units_without_spacing_are_px(tmp_path: Path) -> None:
    ds = open_dataset(write_png_folder(tmp_path / "d", "segmentation", n=6), "segmentation")
    config = SuiteConfig(boundary_tolerance_px=3.0, surface_tolerance_mm=1.0, **FAST)
    run = run_suite(segmenter(), ds, tmp_path / "run", config, progress=False, render=False)
    info = json.loads((run / "run.json").read_text())
    assert info["metric_units"] == {
        "boundary_f1": {"tolerance": 3.0, "unit": "px"},
        "nsd": {"tolerance": 3.0, "unit": "px"},  # no spacing: the px tolerance
        "hd95": {"unit": "px", "clamp": "image diagonal"},
        "pixel_ece_band": {"band": 5.0, "unit": "px"}}
    assert "distance_unit" not in info  # the ambiguous single unit is gone
    assert pd.read_parquet(run / "predictions" / "index.parquet")["spacing"].isna().all()
    diff = run_snippet(run, "gaussian_noise@3")  # the px branch of the snippet
    assert all(diff[m] <= TOLERANCE[m] for m in diff), diff


def test_metric_units_with_spacing_bf1_px_nsd_hd95_mm(tmp_path: Path) -> None:
    """Spacing 0.5 mm: BF1 at 2 px, NSD at 2 mm and HD95 in mm, each recomputed from the stored
    GT, prediction and spacing (Dice/NSD/HD95 with MONAI, BF1 from MONAI's edges), and the
    report labels every column with its unit."""
    root = with_spacing(write_png_folder(tmp_path / "d", "segmentation", n=6), "0.5x0.5")
    ds = open_dataset(root, "segmentation")
    run = run_suite(segmenter(), ds, tmp_path / "run", SuiteConfig(**FAST), progress=False)
    info = json.loads((run / "run.json").read_text())
    units = info["metric_units"]
    assert units["boundary_f1"] == {"tolerance": 2.0, "unit": "px"}
    assert units["nsd"] == {"tolerance": 2.0, "unit": "mm"}
    assert units["hd95"]["unit"] == "mm"
    index = pd.read_parquet(run / "predictions" / "index.parquet").set_index("id")
    assert all(list(s) == [0.5, 0.5] for s in index["spacing"])
    diff = run_snippet(run, "gaussian_noise@3")
    assert all(diff[m] <= TOLERANCE[m] for m in diff), diff
    # boundary_f1 is in px although the images have a spacing (2 mm would be 4 px here)
    gt = np.load(run / "predictions" / "ground_truth.npz")
    probs = np.load(run / "predictions" / "gaussian_noise@3.npz")
    ps = pd.read_parquet(run / "per_sample.parquet")
    bf1 = ps[(ps["condition"] == "gaussian_noise@3") & (ps["metric"] == "boundary_f1")
             ].set_index("id")["value"]
    for sid in index.index:
        t, p = gt[sid] == 1, label_map(probs[sid]) == 1
        assert bf1[sid] == pytest.approx(brute_bf1(t, p, 2.0), abs=1e-12)
    html = (run / "report.html").read_text()
    for label in ("boundary_f1 (τ 2 px)", "nsd (τ 2 mm)", "hd95 (mm)"):
        assert label in html
    assert "distances in px (boundary_f1 τ = 2) and mm (nsd τ = 2, hd95)" in html
    assert "NSD and HD95 in mm (boundary F1 stays in px)" in html  # checklist data assumption


# ---------------------------------------------------------------- ground truth (item 8)


def two_class_folder(root: Path) -> Path:
    """Class 1 (grey 180) and class 2 (grey 240) squares; one image has class 1 only."""
    masks, images = [], []
    for i in range(3):
        m = square(1, size=24)
        if i != 1:
            m[14:20, 14:20] = 2
        masks.append(m)
        images.append(np.select([m == 1, m == 2], [180, 240], 60).astype(np.uint8))
    mask_folder(root, masks)
    for i, img in enumerate(images):  # each image shows its own mask
        Image.fromarray(img).save(root / "images" / f"case{i}.png")
    return root


def promptable() -> PromptableSegmenter:
    """Bright pixels inside the prompt's box."""
    return box_promptable()


@pytest.mark.parametrize("kind", ["binary_0_255", "classes", "instances", "promptable"])
def test_ground_truth_stored_equals_the_datasets_masks(kind: str, tmp_path: Path) -> None:
    if kind == "binary_0_255":
        root = write_png_folder(tmp_path / "d", "segmentation", n=5)
        for path in (root / "masks").glob("*.png"):  # shipped as 0/255
            Image.fromarray((np.array(Image.open(path)) * 255).astype(np.uint8)).save(path)
        model, mode = segmenter(), "binary"
    elif kind == "classes":
        root, model, mode = two_class_folder(tmp_path / "d"), segmenter(2), "classes"
    elif kind == "instances":
        root, model, mode = instance_folder(tmp_path / "d"), segmenter(), "instances"
    else:  # promptable, on instance maps: one prompt per nucleus
        root, model, mode = instance_folder(tmp_path / "d"), promptable(), "instances"
    ds = open_dataset(root, model.spec.task)
    run = run_suite(model, ds, tmp_path / "run", SuiteConfig(**FAST), progress=False,
                    render=False)
    assert json.loads((run / "run.json").read_text())["data"]["mask_mode"]["mode"] == mode
    pred = run / "predictions"
    gt = np.load(pred / "ground_truth.npz")
    assert sorted(gt.files) == sorted(ds.ids)
    index = pd.read_parquet(pred / "index.parquet").set_index("id")
    for sid in ds.ids:
        s = ds.load(sid)
        assert gt[sid].dtype == np.uint8 and gt[sid].shape == s.mask.shape
        np.testing.assert_array_equal(gt[sid], s.mask)  # as the run read it (0/255 -> 0/1)
        assert index.loc[sid, "mask_sha256"] == sha256(root / index.loc[sid, "mask"])
    instances = pred / "ground_truth_instances.npz"
    assert instances.exists() == (mode == "instances")
    if mode == "instances":
        inst = np.load(instances)
        for sid in ds.ids:
            np.testing.assert_array_equal(inst[sid], ds.load(sid).instances)
            assert inst[sid].dtype == np.uint8  # labels up to 122
    if kind == "classes":
        assert {int(v) for sid in ds.ids for v in np.unique(gt[sid])} == {0, 1, 2}
    listed = set(json.loads((run / ".medfail" / "manifest.json").read_text())["files"])
    assert "predictions/ground_truth.npz" in listed
    assert ("predictions/ground_truth_instances.npz" in listed) == (mode == "instances")
    diff = run_snippet(run, "gaussian_noise@3")  # every class, from the stored GT alone
    assert all(diff[m] <= TOLERANCE[m] for m in diff), diff


def test_shift_data_gets_its_own_index_and_ground_truth(tmp_path: Path) -> None:
    ds = open_dataset(with_spacing(write_png_folder(tmp_path / "d", "segmentation", n=4), 0.5),
                      "segmentation")
    shift = open_dataset(with_spacing(write_png_folder(tmp_path / "s", "segmentation", n=3,
                                                       seed=5), 1.0), "segmentation")
    run = run_suite(segmenter(), ds, tmp_path / "run", SuiteConfig(**FAST), shift=shift,
                    progress=False, render=False)
    pred = run / "predictions"
    index = pd.read_parquet(pred / "shift_data.index.parquet").set_index("id")
    gt = np.load(pred / "shift_data.ground_truth.npz")
    assert sorted(gt.files) == sorted(index.index) == sorted(shift.ids)
    for sid in shift.ids:
        np.testing.assert_array_equal(gt[sid], shift.load(sid).mask)
        assert list(index.loc[sid, "spacing"]) == [1.0, 1.0]
    # shift_data's HD95 is in mm at the shift data's own spacing
    ps = pd.read_parquet(run / "per_sample.parquet")
    hd = ps[(ps["condition"] == "shift_data") & (ps["metric"] == "hd95")].set_index("id")
    probs = np.load(pred / "shift_data.npz")
    for sid in shift.ids:
        t, p = gt[sid][None] == 1, label_map(probs[sid])[None] == 1
        assert hd.loc[sid, "value"] == pytest.approx(hd95(t, p, spacing=1.0)[0], rel=1e-12)


def test_shift_data_without_spacing_refused_when_test_data_has_it(tmp_path: Path) -> None:
    """nsd/hd95 in mm for the test data but px for the shift data: one error before the model
    runs (the model here fails the test if called)."""
    ds = open_dataset(with_spacing(write_png_folder(tmp_path / "d", "segmentation", n=3), 0.5),
                      "segmentation")
    shift = open_dataset(write_png_folder(tmp_path / "s", "segmentation", n=3), "segmentation")
    spec = ModelSpec(task="segmentation", target_names=["c1"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the spacing was checked")

    with pytest.raises(MedfailInputError, match=r"no pixel spacing for 3 of 3 images .*"
                       r"images/case000.png.*pixel_spacing"):
        run_suite(Segmenter(spec, forward), ds, tmp_path / "run", SuiteConfig(**FAST),
                  shift=shift, progress=False, render=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- band (item 9)


def test_calibration_band_is_euclidean_5_px() -> None:
    """One GT pixel in a 21x21 image: the band holds the 81 pixels at Euclidean distance <= 5
    (the old city-block band had 61: (3, 4) is at distance 5 but 7 steps away)."""
    truth = np.zeros((21, 21), bool)
    truth[10, 10] = True
    p = np.zeros((21, 21), np.float32)
    bins: dict = {}
    add_pixel_bins(bins, "lesion", p, truth)
    table = pixel_bin_table(bins)
    assert table.loc[table["region"] == "band", "count"].sum() == 81
    band = band_mask(truth, p > 0.5)
    assert band[13, 14] and not band[14, 14]  # distance 5 in, 5.66 out
    expected = ndimage.distance_transform_edt(~truth) <= 5
    np.testing.assert_array_equal(band, expected)
    assert not band_mask(np.zeros((4, 4), bool), np.zeros((4, 4), bool)).any()


def test_ground_truth_buffer_discarded_unwritten_finalises_quietly() -> None:
    """A run refused after the ground truth was read drops its NpzBuffer unwritten; when the
    garbage collector finalises the in-memory file before the ZipFile, the ZipFile's __del__
    must not raise 'I/O operation on closed file' (an unraisable error that, on CPython 3.11.7,
    broke a later torch.jit.script with 'AST constructor recursion depth mismatch')."""
    from medfail.engine.predictions import NpzBuffer

    buffer = NpzBuffer()
    buffer.add("case0", np.zeros((4, 4), np.uint8))
    buffer._buf.close()  # the buffer's finaliser, run first
    buffer._zip.close()  # then the ZipFile's __del__: must not raise
