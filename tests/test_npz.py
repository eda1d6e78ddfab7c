"""NpzDataset on small synthetic MedMNIST-style files (no download)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from medfail.data.datasets import Dataset, open_dataset
from medfail.data.npz import NpzDataset, download_medmnist
from medfail.errors import MedfailInputError

RNG = np.random.default_rng(0)


def write_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def multiclass(path: Path, compressed: bool = False) -> Path:
    return write_npz(
        path, compressed,
        train_images=RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        train_labels=RNG.integers(0, 4, (6, 1)),
        val_images=RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        val_labels=np.array([[0], [1]]),
        test_images=RNG.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
        test_labels=np.array([[0], [3], [1], [2], [3]]),
    )


def multilabel(path: Path) -> Path:
    return write_npz(
        path,
        test_images=RNG.integers(0, 256, (4, 6, 7), dtype=np.uint8),
        test_labels=np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]], np.uint8),
    )


def _error(*args, **kwargs) -> str:
    with pytest.raises(MedfailInputError) as info:
        NpzDataset(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("compressed", [False, True])
def test_multiclass_rgb(tmp_path: Path, compressed: bool) -> None:
    path = multiclass(tmp_path / "derma.npz", compressed)
    ds = NpzDataset(path)
    assert ds.split == "test" and len(ds) == 5 and not ds.multi_label
    assert ds.ids == [f"test_{i:05d}" for i in range(5)]
    assert ds.target_names == ["class_0", "class_1", "class_2", "class_3"]
    s = ds.load("test_00003")
    with np.load(path) as npz:
        np.testing.assert_array_equal(s.image, np.moveaxis(npz["test_images"][3], -1, 0))
    assert s.image.dtype == np.float32 and s.image.shape == (3, 8, 8)
    assert s.label.dtype == np.int64 and s.label.shape == () and int(s.label) == 2
    assert s.value_range == (0.0, 255.0) and s.integer and s.modality == "RGB"
    assert s.mask is None and s.spacing is None and s.metadata == {}
    assert ds.image_relpath("test_00004") == "test_images[4]"
    ds.validate(progress=False)
    assert isinstance(ds, Dataset)


def test_multilabel_gray(tmp_path: Path) -> None:
    ds = NpzDataset(multilabel(tmp_path / "chest.npz"))
    assert ds.multi_label and ds.target_names == ["label_0", "label_1", "label_2"]
    s = ds.load("test_00001")
    assert s.image.shape == (1, 6, 7) and s.modality == ""
    assert s.label.dtype == np.float32
    np.testing.assert_array_equal(s.label, [1, 1, 0])


def test_ids_and_relpath_of_larger_split(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "big.npz", test_images=np.zeros((50, 4, 4), np.uint8),
                     test_labels=np.arange(50)[:, None] % 2)
    ds = NpzDataset(path)
    assert ds.ids[42] == "test_00042" and ds.image_relpath("test_00042") == "test_images[42]"
    assert int(ds.load("test_00043").label) == 1 and ds.target_names == ["class_0", "class_1"]


def test_target_names_passed(tmp_path: Path) -> None:
    ds = NpzDataset(multilabel(tmp_path / "chest.npz"), target_names=["a", "b", "c"])
    assert ds.target_names == ["a", "b", "c"]


def test_split_batches_and_relpaths(tmp_path: Path) -> None:
    ds = NpzDataset(multiclass(tmp_path / "d.npz"), split="train")
    assert [len(b) for b in ds.batches(4)] == [4, 2]
    assert [s.id for s in ds][:2] == ["train_00000", "train_00001"]
    assert ds.image_relpath("train_00005") == "train_images[5]"
    assert ds.metadata.index.tolist() == ds.ids
    with pytest.raises(ValueError):
        ds.mask_relpath("train_00000")
    with pytest.raises(KeyError):
        ds.load("test_00000")


def test_pickle_and_hash(tmp_path: Path) -> None:
    path = multiclass(tmp_path / "d.npz")
    ds = NpzDataset(path)
    ds.load("test_00000")  # maps the images
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.load("test_00004").image, ds.load("test_00004").image)
    assert ds.content_hash() == clone.content_hash()
    assert ds.content_hash() != NpzDataset(path, split="val").content_hash()


def test_open_dataset_npz(tmp_path: Path) -> None:
    path = multiclass(tmp_path / "d.npz")
    assert open_dataset(path, "classification").split == "test"
    ds = open_dataset(path, "classification", split="val")
    assert isinstance(ds, NpzDataset) and len(ds) == 2


# ---------------------------------------------------------------------------- errors


def test_segmentation_task_rejected(tmp_path: Path) -> None:
    msg = _error(multiclass(tmp_path / "d.npz"), "segmentation")
    assert "d.npz" in msg and "classification labels only" in msg


def test_unknown_split_lists_keys(tmp_path: Path) -> None:
    msg = _error(multilabel(tmp_path / "c.npz"), split="train")
    assert "c.npz" in msg and "unknown split 'train'" in msg
    assert "keys present: test_images, test_labels" in msg


def test_3d_rejected(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "organ3d.npz",
                     test_images=np.zeros((2, 28, 28, 28), np.uint8),
                     test_labels=np.zeros((2, 1), np.int64))
    msg = _error(path)
    assert "organ3d.npz" in msg and "3D MedMNIST not supported yet" in msg


def test_label_count_mismatch(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "m.npz", test_images=np.zeros((3, 8, 8), np.uint8),
                     test_labels=np.zeros((2, 1), np.int64))
    msg = _error(path)
    assert "m.npz" in msg and "test_labels has shape (2, 1)" in msg


def test_multilabel_not_01(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "m.npz", test_images=np.zeros((2, 8, 8), np.uint8),
                     test_labels=np.array([[0, 1], [2, 0]]))
    msg = _error(path)
    assert "m.npz" in msg and "test_labels[1, 0] = 2 is not 0/1" in msg


def test_wrong_number_of_target_names(tmp_path: Path) -> None:
    msg = _error(multilabel(tmp_path / "c.npz"), target_names=["a", "b"])
    assert "c.npz" in msg and "3 label columns but 2 target names" in msg


def test_class_out_of_range_for_target_names(tmp_path: Path) -> None:
    msg = _error(multiclass(tmp_path / "d.npz"), target_names=["a", "b"])
    assert "d.npz" in msg and "test_labels[1] = 3 is out of range for 2 target names" in msg


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    msg = _error(tmp_path / "bad.npz")
    assert "bad.npz" in msg and "cannot read npz" in msg


def test_missing_file(tmp_path: Path) -> None:
    msg = _error(tmp_path / "gone.npz")
    assert "gone.npz" in msg and "file not found" in msg


def test_download_without_medmnist_is_clear() -> None:
    try:
        import medmnist  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install medfail\[medmnist\]"):
            download_medmnist("pathmnist", Path("unused"))
    else:
        pytest.skip("medmnist installed; the online path is not tested")
