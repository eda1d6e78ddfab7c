"""Volumes through the engine: streamed .npz files, 3D samples end to end, spacing in mm."""

from __future__ import annotations

import gc
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medfail.engine.predictions import MapWriter, NpzBuffer, NpzWriter, npz_array, npz_arrays

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------- streamed .npz files
def _arrays() -> dict[str, np.ndarray]:
    return {"vol_a": RNG.random((2, 9, 7, 5)).astype(np.float16),
            "vol_b": RNG.integers(0, 3, (9, 7, 5)).astype(np.uint8),
            "empty": np.zeros((0, 4), np.float32),
            "big": RNG.normal(size=(3, 24, 24, 24)).astype(np.float32)}


def test_npz_writer_gives_what_savez_gives(tmp_path: Path) -> None:
    arrays = _arrays()
    writer = NpzWriter(tmp_path / "out.npz")
    for key, a in arrays.items():
        writer.add(key, a)
    assert not (tmp_path / "out.npz").exists()  # only the .tmp until closed
    writer.close()
    np.savez_compressed(tmp_path / "ref.npz", **arrays)
    with np.load(tmp_path / "out.npz") as ours, np.load(tmp_path / "ref.npz") as ref:
        assert ours.files == ref.files == list(arrays)
        for key in arrays:
            assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape
            np.testing.assert_array_equal(ours[key], ref[key])
    with zipfile.ZipFile(tmp_path / "out.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    assert [k for k, _ in npz_arrays(tmp_path / "out.npz")] == list(arrays)
    np.testing.assert_array_equal(npz_array(tmp_path / "out.npz", "vol_b"), arrays["vol_b"])
    assert not list(tmp_path.glob("*.tmp"))


def test_map_writer_stores_float16_and_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = MapWriter(tmp_path / "clean.npz")
    probs = RNG.random((1, 6, 6, 4))
    writer.add("a", probs)
    writer.abort()  # a crash mid-condition
    assert not list(tmp_path.iterdir())
    writer = MapWriter(tmp_path / "clean.npz")
    writer.add("a", probs)
    writer.close()
    stored = npz_array(tmp_path / "clean.npz", "a")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, probs.astype(np.float16))


def test_npz_buffer_spills_to_disk_and_writes_atomically(tmp_path: Path) -> None:
    arrays = _arrays()
    buffer = NpzBuffer()
    for key, a in arrays.items():
        buffer.add(key, a)
    assert buffer.keys == list(arrays)
    buffer.write(tmp_path / "predictions" / "ground_truth.npz")
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["ground_truth.npz"]
    for key, a in npz_arrays(tmp_path / "predictions" / "ground_truth.npz"):
        np.testing.assert_array_equal(a, arrays[key])
    dropped = NpzBuffer()  # a run refused after the ground truth was read: dropped unwritten
    dropped.add("x", arrays["vol_b"])
    del dropped
    gc.collect()


def test_a_crash_mid_condition_leaves_no_half_file(tmp_path: Path) -> None:
    """The local executor aborts the condition's writer when prediction raises."""
    from medfail.conditions import Condition
    from medfail.engine.executors import Job, LocalExecutor
    from medfail.engine.predictor import Predictor
    from medfail.engine.suite import SuiteConfig

    dataset = volume_dataset(tmp_path / "data", n=3)
    calls = {"n": 0}

    def forward(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-condition")
        return _threshold(x)

    predictor = Predictor([volume_segmenter(forward)], SuiteConfig(), spacing_mm=True,
                          run_dir=tmp_path / "run", dims=3)
    cond = Condition("clean", "clean", "clean", 0)
    with pytest.raises(RuntimeError, match="killed"):
        list(LocalExecutor(predictor).run([Job(cond, dataset)]))
    left = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert left == []


# ------------------------------------------------------------------------ tiny 3D test data
def _threshold(x):
    import torch

    fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
    return torch.cat([1 - fg, fg], dim=1)


def volume_segmenter(forward=_threshold):
    """A 3D threshold segmenter: foreground = sigmoid((x - 130) / 10) per voxel."""
    from medfail.models.adapters import Segmenter
    from medfail.models.spec import ModelSpec

    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities",
                     spatial_dims=3, input_size=(16, 16, 16))
    return Segmenter(spec, forward)


class VolumeDataset:
    """An in-memory dataset of 3D Samples (the folder reader's interface, no files)."""

    def __init__(self, root: Path, samples: list) -> None:
        self.root = root
        self.samples = {s.id: s for s in samples}
        self.ids = sorted(self.samples)
        self.target_names = ["lesion"]
        self.metadata = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return (self.load(i) for i in self.ids)

    def load(self, id: str):
        import copy

        return copy.deepcopy(self.samples[id])

    def batches(self, batch_size: int):
        for start in range(0, len(self.ids), batch_size):
            yield [self.load(i) for i in self.ids[start:start + batch_size]]

    def validate(self, progress: bool = True) -> None:
        pass

    def image_relpath(self, id: str) -> str:
        return f"images/{id}.nii.gz"

    def mask_relpath(self, id: str) -> str:
        return f"masks/{id}.nii.gz"

    def content_hash(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for i in self.ids:
            s = self.samples[i]
            h.update(s.image.tobytes())
            h.update(np.asarray(s.mask).tobytes())
            h.update(repr(s.spacing).encode())
        return h.hexdigest()


def volume_sample(sid: str, shape: tuple[int, int, int] = (20, 18, 16),
                  spacing: tuple[float, float, float] | None = (1.0, 1.0, 2.0),
                  seed: int = 0):
    """A noisy volume (grey 60) with one or two bright blobs (200) = the lesion mask."""
    from medfail.data.sample import Sample

    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    mask = np.zeros(shape, np.uint8)
    for _ in range(1 + seed % 2):
        centre = [rng.integers(5, n - 5) for n in shape]
        radius = rng.uniform(2.5, 4.5)
        mask[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2] = 1
    image = rng.normal(60, 8, shape)
    image[mask == 1] = 200
    image = np.clip(image, 0, 255).astype(np.float32)[None]
    return Sample(sid, image, (0.0, 255.0), integer=True, mask=mask, spacing=spacing,
                  modality="CT")


def volume_dataset(root: Path, n: int = 4, spacing: tuple[float, float, float] | None
                   = (1.0, 1.0, 2.0)) -> VolumeDataset:
    return VolumeDataset(root, [volume_sample(f"vol{i:02d}", spacing=spacing, seed=i)
                                for i in range(n)])


# ------------------------------------------------------------------------ end to end on volumes
FAST = {"n_bootstrap": 20, "severities": [1, 3], "uncertainty": ["tta"], "min_slice_n": 1}


def test_volumes_run_end_to_end(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from medfail.analysis.analyse import analyse
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    ds = volume_dataset(tmp_path / "data", n=4)
    config = SuiteConfig(tests=["gaussian_noise", "blur_3d"], **FAST)
    run = run_suite(volume_segmenter(), ds, tmp_path / "run", config, progress=False,
                    calibration=volume_dataset(tmp_path / "cal", n=2))
    info = json.loads((run / "run.json").read_text())
    assert info["conditions"][:5] == ["clean", "gaussian_noise@1", "gaussian_noise@3",
                                      "blur_3d@1", "blur_3d@3"]
    assert info["metric_units"]["hd95"]["unit"] == "mm" and info["data"]["spatial_dims"] == 3
    index = pd.read_parquet(run / "predictions" / "index.parquet").set_index("id")
    assert index["depth"].tolist() == [16] * 4 and index["height"].tolist() == [20] * 4
    with np.load(run / "predictions" / "clean.npz") as stored:
        assert stored["vol00"].shape == (1, 20, 18, 16) and stored["vol00"].dtype == np.float16
    metrics = pd.read_parquet(run / "metrics.parquet")
    dice = metrics[(metrics["metric"] == "dice") & (metrics["slice"] == "all")
                   ].set_index("condition")["value"]
    assert dice["clean"] > 0.95 and dice["gaussian_noise@3"] < dice["clean"]
    assert {"tta", f"tta|{info['mitigation']['worst_condition']}"} <= set(dice.index)
    evidence = pd.read_parquet(run / "evidence.parquet")
    assert {"clean", "blur_3d@3"} <= set(evidence["condition"])
    html = (run / "report.html").read_text()
    assert "volume size (voxels)" in html and "20–20 × 18–18 × 16–16" in html
    analyse(run, progress=False)  # the analyses rebuilt from the run directory alone
    pd.testing.assert_frame_equal(pd.read_parquet(run / "metrics.parquet"), metrics)


def _roll_segmenter(shift: int = 2):
    """Threshold segmenter whose prediction is moved ``shift`` voxels along X: imperfect, so
    HD95 and NSD are not trivially 0 and 1."""
    import torch

    return volume_segmenter(lambda x: _threshold(torch.roll(x, shift, dims=2)))


CLEAN_ONLY = {"tests": ["gaussian_noise"], "severities": [1], "uncertainty": [],
              "mitigate": False, "n_bootstrap": 20}


def _clean_rows(run: Path, metric: str):
    import pandas as pd

    ps = pd.read_parquet(run / "per_sample.parquet")
    return ps[(ps["condition"] == "clean") & (ps["metric"] == metric)].set_index("id")["value"]


def test_stored_metrics_equal_the_metric_functions_with_the_volume_spacing(
        tmp_path: Path) -> None:
    import pandas as pd

    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.metrics.segmentation import boundary_f1, dice, hd95, nsd
    from medfail.rundir import label_map

    spacing = (0.8, 0.8, 2.5)
    ds = volume_dataset(tmp_path / "data", n=3, spacing=spacing)
    run = run_suite(_roll_segmenter(), ds, tmp_path / "run", SuiteConfig(**CLEAN_ONLY),
                    progress=False, render=False)
    index = pd.read_parquet(run / "predictions" / "index.parquet").set_index("id")
    stored_dice, stored_hd, stored_nsd, stored_bf1 = (
        _clean_rows(run, m) for m in ("dice", "hd95", "nsd", "boundary_f1"))
    units = json.loads((run / "run.json").read_text())["metric_units"]
    assert units["boundary_f1"] == {"tolerance": 2.0, "unit": "mm"}  # Boundary-F1@2mm
    with np.load(run / "predictions" / "clean.npz") as maps, \
            np.load(run / "predictions" / "ground_truth.npz") as gt:
        for sid in ds.ids:
            assert tuple(index.loc[sid, "spacing"]) == spacing
            truth, pred = (gt[sid] == 1)[None], (label_map(maps[sid]) == 1)[None]
            np.testing.assert_array_equal(gt[sid], ds.samples[sid].mask)
            assert stored_dice[sid] == pytest.approx(dice(truth, pred)[0], abs=1e-12)
            assert stored_hd[sid] == pytest.approx(hd95(truth, pred, spacing=spacing)[0],
                                                   abs=1e-9)
            assert stored_nsd[sid] == pytest.approx(
                nsd(truth, pred, tolerance=2.0, spacing=spacing)[0], abs=1e-12)
            assert 0 < stored_hd[sid] != hd95(truth, pred)[0]  # the spacing was used
            assert stored_bf1[sid] == pytest.approx(
                boundary_f1(truth, pred, tolerance=2.0, spacing=spacing)[0], abs=1e-12)


def test_doubled_spacing_doubles_hd95_and_lowers_nsd(tmp_path: Path) -> None:
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    runs = {}
    for s in (1.0, 2.0):
        ds = volume_dataset(tmp_path / f"data{s}", n=3, spacing=(s, s, s))
        runs[s] = run_suite(_roll_segmenter(), ds, tmp_path / f"run{s}",
                            SuiteConfig(**CLEAN_ONLY), progress=False, render=False)
    hd1, hd2 = _clean_rows(runs[1.0], "hd95"), _clean_rows(runs[2.0], "hd95")
    assert (hd1 > 0).all()
    np.testing.assert_allclose(hd2.to_numpy(), 2 * hd1.to_numpy(), rtol=1e-9)
    nsd1, nsd2 = _clean_rows(runs[1.0], "nsd"), _clean_rows(runs[2.0], "nsd")
    assert (nsd2 < nsd1).all()  # the same 2 mm tolerance is one voxel instead of two
    np.testing.assert_array_equal(_clean_rows(runs[1.0], "dice"), _clean_rows(runs[2.0], "dice"))


def test_segmenters_get_each_volume_spacing(tmp_path: Path) -> None:
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    seen: list = []
    model = volume_segmenter()
    predict = model.predict_proba

    def spy(images, spacings=None):
        seen.append((len(images), spacings))
        return predict(images, spacings=spacings)

    model.predict_proba = spy  # type: ignore[method-assign]
    ds = volume_dataset(tmp_path / "data", n=2, spacing=(0.7, 0.9, 3.0))
    run_suite(model, ds, tmp_path / "run", SuiteConfig(**{**CLEAN_ONLY, "uncertainty": ["tta"]}),
              progress=False, render=False)
    runs = [entry for entry in seen if entry[1] is not None]
    assert runs and all(n == 1 for n, _ in runs)  # the suite's volumes go one at a time
    assert all(list(sp) == [(0.7, 0.9, 3.0)] for _, sp in runs)
    # every forward pass of the suite (clean, stress, 4 TTA flips) got the spacing
    assert len(runs) >= 2 * (1 + 1 + 4)


def test_default_conditions_for_volumes_come_from_the_catalogue() -> None:
    from medfail.engine.suite import SuiteConfig
    from medfail.errors import MedfailInputError
    from medfail.stress import registry

    names = SuiteConfig(severities=[1]).test_names("segmentation", "CT", dims=3)
    assert names and set(names) <= set(registry.names_for(3))
    assert {"blur_3d", "gaussian_noise", "slice_thickness"} <= set(names)
    assert not {"jpeg", "gaussian_blur", "box_shift"} & set(names)
    assert "blur_3d" not in SuiteConfig().test_names("segmentation", "CT")  # 2D default
    with pytest.raises(MedfailInputError, match=r"jpeg.*2D images only.*3D volumes"):
        SuiteConfig(tests=["jpeg"]).conditions("segmentation", "CT", dims=3)


def test_classifiers_and_promptable_models_are_refused_on_volumes(tmp_path: Path) -> None:
    import torch

    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.errors import MedfailInputError
    from medfail.models.adapters import Classifier
    from medfail.models.spec import ModelSpec
    from tests.conftest import box_promptable

    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.full((x.shape[0], 1), 0.5)

    classifier = Classifier(ModelSpec(task="classification", target_names=["lesion"],
                                      output="probabilities"), forward)
    ds = volume_dataset(tmp_path / "data", n=2)
    for model in (classifier, box_promptable()):
        with pytest.raises(MedfailInputError, match=r"3D volumes.*segmenters only"):
            run_suite(model, ds, tmp_path / "run", SuiteConfig(**CLEAN_ONLY), progress=False)
    assert calls == [] and not (tmp_path / "run").exists()
    flat = _2d_segmenter()
    with pytest.raises(MedfailInputError, match=r"spatial_dims 2.*3D volumes"):
        run_suite(flat, ds, tmp_path / "run", SuiteConfig(**CLEAN_ONLY), progress=False)


def _2d_segmenter():
    from medfail.models.adapters import Segmenter
    from medfail.models.spec import ModelSpec

    return Segmenter(ModelSpec(task="segmentation", target_names=["lesion"],
                               output="probabilities"), _threshold)


def test_nifti_volumes_through_medfail_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A 3D NIfTI folder (spacing 0.8 x 0.8 x 2.5 mm from the affine) and an entry-point
    segmenter through the CLI: stored in mm, volumes in the index, HD95 with that spacing."""
    import json

    import nibabel as nib
    import pandas as pd
    from typer.testing import CliRunner

    from medfail.cli import app
    from medfail.metrics.segmentation import hd95
    from medfail.rundir import label_map

    spacing = (0.8, 0.8, 2.5)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(3):
        s = volume_sample(f"case{i}", spacing=spacing, seed=i)
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(s.image[0].astype(np.int16), affine),
                 data / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(s.mask, affine), data / "masks" / f"case{i}.nii.gz")
    (tmp_path / "vol_models.py").write_text(
        "import torch\n"
        "def make():\n"
        "    def predict(x):\n"
        "        fg = torch.sigmoid((torch.roll(x[:, :1], 1, dims=4) - 130.0) / 10.0)\n"
        "        return torch.cat([1 - fg, fg], dim=1)\n"
        "    return predict\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"task": "segmentation", "target_names": ["lesion"],
                                "output": "probabilities", "input_size": [16, 16, 16],
                                "normalisation": None}))
    suite = tmp_path / "suite.yaml"
    suite.write_text("tests: [gaussian_noise]\nseverities: [1]\nuncertainty: []\n"
                     "mitigate: false\nn_bootstrap: 20\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", "--model", "vol_models:make", "--model-spec", str(spec), "--data", str(data),
        "--task", "segmentation", "--out", str(out), "--config", str(suite)])
    assert result.exit_code == 0, result.output
    index = pd.read_parquet(out / "predictions" / "index.parquet").set_index("id")
    assert [tuple(v) for v in index["spacing"]] == [spacing] * 3
    assert index["depth"].tolist() == [16] * 3
    assert json.loads((out / "run.json").read_text())["metric_units"]["hd95"]["unit"] == "mm"
    ps = pd.read_parquet(out / "per_sample.parquet")
    hd = ps[(ps["condition"] == "clean") & (ps["metric"] == "hd95")].set_index("id")["value"]
    with np.load(out / "predictions" / "clean.npz") as maps, \
            np.load(out / "predictions" / "ground_truth.npz") as gt:
        for sid in index.index:
            truth, pred = (gt[sid] == 1)[None], (label_map(maps[sid]) == 1)[None]
            assert hd[sid] == pytest.approx(hd95(truth, pred, spacing=spacing)[0], abs=1e-9)
            # one slice off along z (2.5 mm): no surface point is farther than that
            assert 0 < hd[sid] <= 2.5 + 1e-9 and hd[sid] != hd95(truth, pred)[0]
    assert (out / "report.html").exists()
    sys.modules.pop("vol_models", None)
