"""The volumetric demo: 3D phantoms (determinism, geometry), three-view case studies, and one
slow end-to-end run of ``medfail demo --task volumetric``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medfail.analysis.case_studies import failure_point, orthogonal_views, plane, plane_aspect
from medfail.data.datasets import open_dataset
from medfail.data.phantoms3d import (
    LESION_RADII_MM,
    SITES_3D,
    Phantom3DConfig,
    generate_phantom3d,
    write_phantom3d_splits,
    write_split3d,
)
from medfail.metrics.segmentation import volume_ml
from medfail.report.figures import display_window, volume_case_figure
from medfail.seeding import derive_seed

TINY = Phantom3DConfig(shape=(40, 40, 24), n_train=3, n_val=1, n_calibration=1, n_test=4,
                       n_shift=2)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_volumes(tmp_path: Path) -> None:
    a = write_phantom3d_splits(tmp_path / "a", TINY)
    write_phantom3d_splits(tmp_path / "b", TINY)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert set(a) == {"train", "val", "calibration", "test", "shift"}
    other = write_split3d(tmp_path / "c", "test", 4, Phantom3DConfig(shape=(40, 40, 24), seed=1))
    assert _digest(other) != _digest(a["test"])
    stamp = (tmp_path / "a" / "phantoms3d.json").stat().st_mtime_ns
    write_phantom3d_splits(tmp_path / "a", TINY)  # same config: nothing rewritten
    assert (tmp_path / "a" / "phantoms3d.json").stat().st_mtime_ns == stamp


def test_stored_lps_reads_back_canonical_with_spacing_and_metadata(tmp_path: Path) -> None:
    root = write_split3d(tmp_path, "test", 4, TINY)
    img = nib.load(root / "images" / "test_0000.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # not canonical on disk
    assert img.get_data_dtype() == np.int16 and img.header.get_xyzt_units()[0] == "mm"
    ds = open_dataset(root, "segmentation")
    meta = pd.read_csv(root / "metadata.csv")
    assert {"site", "slice_thickness", "lesion_size", "location", "n_lesions",
            "lesion_volume_ml"} <= set(meta.columns)
    sites = list(meta["site"])
    for i, sid in enumerate(meta["id"]):
        s = ds.load(sid)
        rng = np.random.default_rng(derive_seed(TINY.seed, "test", str(i)))
        thick = meta.loc[i, "slice_thickness"] > TINY.spacing[2]
        ph = generate_phantom3d(rng, TINY, sites[i], bool(thick))
        # the reader's canonical RAS+ array is the generator's array, voxel for voxel
        assert s.image.shape == (1, *TINY.shape) and s.spacing == pytest.approx(TINY.spacing)
        np.testing.assert_array_equal(s.image[0], ph.image)
        np.testing.assert_array_equal(s.mask, ph.mask)
        assert meta.loc[i, "lesion_volume_ml"] == pytest.approx(
            volume_ml(s.mask == 1, s.spacing), abs=1e-4)


def test_lesions_have_the_stated_sizes_and_sites_differ() -> None:
    config = Phantom3DConfig()
    sizes = []
    for i in range(12):
        ph = generate_phantom3d(np.random.default_rng(i), config, "A", False)
        sizes.append((ph.metadata["lesion_size"], ph.metadata["lesion_volume_ml"],
                      ph.metadata["n_lesions"]))
    singles = [(k, v) for k, v, n in sizes if n == 1]
    assert singles
    for kind, ml in singles:  # one lesion: its voxelised volume is near the sphere's
        lo, hi = (4 / 3 * np.pi * r**3 / 1000 for r in LESION_RADII_MM[kind])
        assert 0.6 * lo <= ml <= 1.4 * hi
    a = generate_phantom3d(np.random.default_rng(0), config, "A", False).image.astype(float)
    b = generate_phantom3d(np.random.default_rng(0), config, "B", False).image.astype(float)
    c = generate_phantom3d(np.random.default_rng(0), config, "C", False).image.astype(float)
    fat, body = a < -50, a > -50
    # same draws, so B - A is the extra noise: (24 - 8) HU x N(0, 1) in the body
    extra = SITES_3D["B"].noise_hu - SITES_3D["A"].noise_hu
    assert extra > 10 and np.std((b - a)[body]) == pytest.approx(extra, rel=0.1)
    assert np.median(c[fat]) == pytest.approx(-90 * 0.8 + 30, abs=5)  # miscalibrated HU


def test_failure_point_is_in_the_largest_error_component() -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[2:6, 2:6, 2:5] = 1  # found
    mask[12:18, 12:18, 4:8] = 1  # missed: the largest error
    prob = np.zeros(mask.shape, np.float32)
    prob[2:6, 2:6, 2:5] = 0.9
    prob[0, 19, 0] = 0.8  # a one-voxel false positive
    point = failure_point(mask, prob)
    assert 12 <= point[0] < 18 and 12 <= point[1] < 18 and 4 <= point[2] < 8
    assert failure_point(mask, mask.astype(np.float32)) == (14, 14, 5)  # no error: largest GT
    assert failure_point(np.zeros((4, 4, 4)), np.zeros((4, 4, 4))) == (2, 2, 2)


def test_planes_are_radiological_with_spacing_aspect() -> None:
    vol = np.zeros((6, 5, 4))
    vol[5, 4, 3] = 1  # the patient's right (+x), anterior (+y), superior (+z) corner
    axial, coronal, sagittal = (plane(vol, v, 3 if v == "axial" else 4 if v == "coronal"
                                      else 5) for v in ("axial", "coronal", "sagittal"))
    assert axial.shape == (5, 6) and axial[0, 0] == 1  # anterior up, right on the left
    assert coronal.shape == (4, 6) and coronal[0, 0] == 1  # superior up, right on the left
    assert sagittal.shape == (4, 5) and sagittal[0, 0] == 1  # superior up, anterior left
    spacing = (0.8, 0.7, 2.5)
    assert plane_aspect(spacing, "axial") == pytest.approx(0.7 / 0.8)
    assert plane_aspect(spacing, "coronal") == pytest.approx(2.5 / 0.8)
    assert plane_aspect(spacing, "sagittal") == pytest.approx(2.5 / 0.7)
    assert plane_aspect(None, "axial") == 1.0


def test_three_view_case_figure(tmp_path: Path) -> None:
    ph = generate_phantom3d(np.random.default_rng(3), TINY, "A", False)
    image = ph.image.astype(np.float32)[None]
    prob = np.where(ph.mask == 1, 0.2, 0.01).astype(np.float32)[None]  # everything missed
    arrays = {"clean": image, "image": image + 5, "mask": ph.mask, "prob": prob,
              "prob_clean": ph.mask.astype(np.float32)[None],
              "value_range": np.array([-1024.0, 3071.0])}
    views = orthogonal_views(arrays, TINY.spacing)
    assert list(views) == ["axial", "coronal", "sagittal"]
    for v in views.values():  # the cross sits on the missed lesion in every view
        row, col = v["point"]
        assert v["mask"][row, col] == 1 and v["prob"][row, col] < 0.5
    lo, hi = display_window(image[0])
    assert -100 < lo < 60 < hi < 250  # soft tissue, not air
    path = volume_case_figure(arrays, tmp_path / "case.png", TINY.spacing)
    assert path.exists() and path.stat().st_size > 10_000


@pytest.mark.slow
def test_volumetric_demo_end_to_end(tmp_path: Path) -> None:
    """``medfail demo --task volumetric`` (severity 3 only, 200 resamples): the report with
    three-view case figures, and a clean Dice far above the trivial empty prediction (0.69 on
    models trained at 1 and 2 threads vs 0.125; asserted: a margin of 0.3)."""
    import json

    from PIL import Image

    from medfail.demo import run_demo
    from medfail.engine.suite import SuiteConfig

    suite = SuiteConfig(severities=[3], n_bootstrap=200)
    reports = run_demo(tmp_path, ("volumetric",), suite=suite, progress=False)
    run_dir = tmp_path / "volumetric"
    assert reports == {"volumetric": run_dir / "report.html"}
    assert reports["volumetric"].exists() and (run_dir / "report.pdf").stat().st_size > 50_000
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data"]["spatial_dims"] == 3 and run["model"]["spec"]["spatial_dims"] == 3

    cases = json.loads((run_dir / "cases" / "cases.json").read_text())
    assert cases
    for k in range(len(cases)):
        arrays = dict(np.load(run_dir / "cases" / f"case_{k}.npz"))
        assert np.ndim(arrays["mask"]) == 3
        views = orthogonal_views(arrays)
        assert list(views) == ["axial", "coronal", "sagittal"]
        with Image.open(run_dir / "figures" / f"case_{k + 1}.png") as fig:
            assert fig.height / fig.width > 0.5  # three rows of views (2D cases: one row)

    per_sample = pd.read_parquet(run_dir / "per_sample.parquet")
    dice = per_sample[(per_sample["condition"] == "clean") & (per_sample["metric"] == "dice")]
    test = pd.read_csv(tmp_path / "data3d" / "test" / "metadata.csv")
    trivial = float((test["n_lesions"] == 0).mean())  # an empty prediction: Dice 1 iff no lesion
    assert len(dice) == len(test)
    assert dice["value"].mean() > trivial + 0.3, (dice["value"].mean(), trivial)
