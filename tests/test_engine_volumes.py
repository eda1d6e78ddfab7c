"""Volumes through the engine: streamed .npz files, 3D samples end to end, spacing in mm."""

from __future__ import annotations

import gc
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
def _threshold(x):  # noqa: ANN001, ANN202  (torch tensor in, torch tensor out)
    import torch

    fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
    return torch.cat([1 - fg, fg], dim=1)


def volume_segmenter(forward=_threshold):  # noqa: ANN001, ANN201
    """A 3D threshold segmenter: foreground = sigmoid((x - 130) / 10) per voxel."""
    from medfail.models.adapters import Segmenter
    from medfail.models.spec import ModelSpec

    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities",
                     spatial_dims=3, input_size=(16, 16, 16))
    return Segmenter(spec, forward)


class VolumeDataset:
    """An in-memory dataset of 3D Samples (the folder reader's interface, no files)."""

    def __init__(self, root: Path, samples: list) -> None:  # noqa: ANN001
        self.root = root
        self.samples = {s.id: s for s in samples}
        self.ids = sorted(self.samples)
        self.target_names = ["lesion"]
        self.metadata = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):  # noqa: ANN204
        return (self.load(i) for i in self.ids)

    def load(self, id: str):  # noqa: ANN201, A002
        import copy

        return copy.deepcopy(self.samples[id])

    def batches(self, batch_size: int):  # noqa: ANN201
        for start in range(0, len(self.ids), batch_size):
            yield [self.load(i) for i in self.ids[start:start + batch_size]]

    def validate(self, progress: bool = True) -> None:
        pass

    def image_relpath(self, id: str) -> str:  # noqa: A002
        return f"images/{id}.nii.gz"

    def mask_relpath(self, id: str) -> str:  # noqa: A002
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
                  seed: int = 0):  # noqa: ANN201
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

    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    ds = volume_dataset(tmp_path / "data", n=4)
    config = SuiteConfig(tests=["gaussian_noise", "blur_3d"], **FAST)
    run = run_suite(volume_segmenter(), ds, tmp_path / "run", config, progress=False,
                    calibration=volume_dataset(tmp_path / "cal", n=2))
    info = json.loads((run / "run.json").read_text())
    assert info["conditions"][:5] == ["clean", "gaussian_noise@1", "gaussian_noise@3",
                                      "blur_3d@1", "blur_3d@3"]
    assert info["metric_units"]["hd95"]["unit"] == "mm"
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
    assert (run / "report.html").exists()
