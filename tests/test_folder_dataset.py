"""FolderDataset: the folder format contract, its inference rules and every bad-input error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medfail.data.datasets import Dataset, open_dataset
from medfail.data.folder import FolderDataset, parse_spacing
from medfail.errors import MedfailInputError

IDS = ("a", "b", "c", "d")


def _png(path: Path, shape: tuple[int, int] = (8, 10), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(shape[0] * shape[1]).reshape(shape) + value) % 256
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _mask(path: Path, shape: tuple[int, int] = (8, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(shape, np.uint8)
    m[2:5, 3:6] = 1
    Image.fromarray(m).save(path)


def make_folder(root: Path, labels: str | None = "id,x,y\na,1,0\nb,0,1\nc,1,1\nd,0,0\n",
                masks: bool = False, metadata: str | None = None) -> Path:
    for i, sid in enumerate(IDS):
        _png(root / "images" / f"{sid}.png", value=i)
        if masks:
            _mask(root / "masks" / f"{sid}.png")
    if labels is not None:
        (root / "labels.csv").write_text(labels)
    if metadata is not None:
        (root / "metadata.csv").write_text(metadata)
    return root


def _error(root: Path, *args, **kwargs) -> str:
    with pytest.raises(MedfailInputError) as info:
        FolderDataset(root, *args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------- good data


def test_multi_label_inferred(tmp_path: Path) -> None:
    ds = FolderDataset(make_folder(tmp_path), "classification")
    assert ds.ids == list(IDS) and len(ds) == 4
    assert ds.target_names == ["x", "y"] and ds.multi_label
    s = ds.load("c")
    assert s.id == "c" and s.image.shape == (1, 8, 10) and s.image.dtype == np.float32
    assert s.label.dtype == np.float32
    np.testing.assert_array_equal(s.label, [1.0, 1.0])
    assert s.value_range == (0.0, 255.0) and s.integer and s.mask is None
    assert s.spacing is None and s.metadata == {}
    assert ds.metadata.index.tolist() == list(IDS) and ds.metadata.shape[1] == 0
    assert isinstance(ds, Dataset)


def test_multi_label_target_names_select_and_reorder(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,x,y,z\na,1,0,0\nb,0,1,0\nc,1,1,1\nd,0,0,1\n")
    ds = FolderDataset(root, "classification", target_names=["z", "x"])
    assert ds.target_names == ["z", "x"]
    np.testing.assert_array_equal(ds.load("d").label, [1.0, 0.0])


def test_multi_class_names_sorted(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,label\na,normal\nb,covid\nc,normal\nd,pneumonia\n")
    ds = FolderDataset(root, "classification")
    assert not ds.multi_label and ds.target_names == ["covid", "normal", "pneumonia"]
    label = ds.load("d").label
    assert label.dtype == np.int64 and label.shape == () and int(label) == 2


def test_multi_class_ints_are_indices(tmp_path: Path) -> None:
    # class 1 absent from this split: 10 must stay index 10, 2 must stay 2
    root = make_folder(tmp_path, labels="id,label\na,0\nb,2\nc,10\nd,2\n")
    ds = FolderDataset(root, "classification")
    assert ds.target_names == [str(i) for i in range(11)]
    assert int(ds.load("c").label) == 10 and int(ds.load("b").label) == 2


def test_multi_class_mapped_onto_target_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,label\na,cat\nb,dog\nc,1\nd,cat\n")
    ds = FolderDataset(root, "classification", target_names=["dog", "cat"])
    assert [int(ds.load(i).label) for i in IDS] == [1, 0, 1, 1]


def test_single_binary_column_is_multi_label(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,nodule\na,1\nb,0\nc,1.0\nd,false\n")
    ds = FolderDataset(root, "classification")
    assert ds.multi_label and ds.target_names == ["nodule"]
    assert [float(ds.load(i).label[0]) for i in IDS] == [1.0, 0.0, 1.0, 0.0]


def test_metadata_and_spacing_from_metadata(tmp_path: Path) -> None:
    meta = "id,site,pixel_spacing\na,A,0.7\nb,NA,0.7x0.6\nc,B,\"0.5,0.5\"\n"
    ds = FolderDataset(make_folder(tmp_path, metadata=meta), "classification")
    assert ds.load("a").spacing == (0.7, 0.7)
    assert ds.load("b").spacing == (0.7, 0.6)
    assert ds.load("b").metadata == {"site": "NA", "pixel_spacing": "0.7x0.6"}
    assert ds.load("d").spacing is None  # no metadata row
    assert ds.load("d").metadata == {"site": None, "pixel_spacing": None}
    assert ds.metadata.loc["c", "site"] == "B"


def test_header_spacing_wins_over_metadata(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,x\na,1\nb,0\nc,1\nd,0\ne,1\n",
                       metadata="id,pixel_spacing\ne,0.9\n")
    img = nib.Nifti1Image(np.zeros((10, 8), np.int16), np.eye(4))
    img.header.set_zooms((0.5, 0.8))
    nib.save(img, root / "images" / "e.nii.gz")
    ds = FolderDataset(root, "classification")
    s = ds.load("e")
    assert s.image.shape == (1, 8, 10) and s.spacing == pytest.approx((0.8, 0.5))
    assert ds.image_relpath("e") == "images/e.nii.gz"


@pytest.mark.parametrize("task", ["segmentation", "promptable"])
def test_segmentation(tmp_path: Path, task: str) -> None:
    ds = FolderDataset(make_folder(tmp_path, labels=None, masks=True), task)
    ds.validate(progress=False)
    s = ds.load("b")
    assert s.mask.dtype == np.int64 and s.mask.shape == (8, 10) and s.mask.sum() == 9
    assert s.label is None
    assert ds.mask_relpath("b") == "masks/b.png" and ds.image_relpath("b") == "images/b.png"


def test_iteration_and_batches(tmp_path: Path) -> None:
    ds = FolderDataset(make_folder(tmp_path), "classification")
    assert [s.id for s in ds] == list(IDS)
    batches = list(ds.batches(3))
    assert [[s.id for s in b] for b in batches] == [["a", "b", "c"], ["d"]]
    with pytest.raises(KeyError):
        ds.load("zzz")
    with pytest.raises(ValueError):
        ds.mask_relpath("a")


def test_content_hash_tracks_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    first = FolderDataset(root, "classification").content_hash()
    assert first == FolderDataset(root, "classification").content_hash() and len(first) == 64
    _png(root / "images" / "b.png", value=7)
    assert FolderDataset(root, "classification").content_hash() != first


def test_hidden_files_ignored(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "images" / ".DS_Store").write_bytes(b"x")
    assert FolderDataset(root, "classification").ids == list(IDS)


def test_parse_spacing() -> None:
    assert parse_spacing(0.7) == (0.7, 0.7)
    assert parse_spacing("0.7 x 0.5") == (0.7, 0.5)
    assert parse_spacing("0.7,0.5") == (0.7, 0.5)
    assert parse_spacing(float("nan")) is None
    with pytest.raises(ValueError):
        parse_spacing("thin")


def test_open_dataset_folder(tmp_path: Path) -> None:
    ds = open_dataset(make_folder(tmp_path), "classification")
    assert isinstance(ds, FolderDataset) and ds.target_names == ["x", "y"]


# ---------------------------------------------------------------------------- bad structure


def test_root_missing(tmp_path: Path) -> None:
    msg = _error(tmp_path / "nowhere", "classification")
    assert "nowhere" in msg and "not found" in msg


def test_unknown_task(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path), "detection")
    assert "unknown task 'detection'" in msg and "classification" in msg


def test_images_dir_missing(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("id,x\n")
    msg = _error(tmp_path, "classification")
    assert "images: missing" in msg and ".png" in msg


def test_images_dir_empty(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    msg = _error(tmp_path, "classification")
    assert "images: no image files found" in msg


def test_unsupported_image_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "images" / "e.bmp").write_bytes(b"BM")
    msg = _error(root, "classification")
    assert "e.bmp" in msg and "unsupported file type '.bmp'" in msg


def test_duplicate_image_ids(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    np.save(root / "images" / "a.npy", np.zeros((8, 10)))
    msg = _error(root, "classification")
    assert "images" in msg and "duplicate id 'a'" in msg and "a.npy" in msg and "a.png" in msg


def test_labels_missing(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels=None), "classification")
    assert "labels.csv: missing" in msg and "'id' column" in msg


def test_labels_without_id_column(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="name,x\na,1\n"), "classification")
    assert "labels.csv" in msg and "no 'id' column" in msg and "name, x" in msg


def test_labels_without_targets(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id\na\nb\nc\nd\n"), "classification")
    assert "labels.csv" in msg and "no target columns" in msg


def test_labels_duplicate_id(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x\na,1\nb,0\na,1\nc,0\nd,0\n"),
                 "classification")
    assert "labels.csv" in msg and "duplicate id 'a' in rows 2 and 4" in msg


def test_labels_unknown_id(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x\na,1\nb,0\nzz,1\nc,0\nd,0\n"),
                 "classification")
    assert "labels.csv" in msg and "unknown id 'zz' in labels.csv row 4" in msg


def test_labels_id_with_suffix_hint(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x\na.png,1\n"), "classification")
    assert "unknown id 'a.png'" in msg and "without suffix, e.g. 'a'" in msg


def test_image_without_label(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x\na,1\nb,0\n"), "classification")
    assert "labels.csv" in msg and "no label for 2 image(s): images/c.png, images/d.png" in msg


def test_labels_ragged_row(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x,y\na,1,0\nb,0\n"), "classification")
    assert "labels.csv" in msg and "row 3 has 2 fields, the header has 3" in msg


def test_multi_label_value_not_01(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels="id,x,y\na,1,0\nb,0,2\nc,1,1\nd,0,0\n"),
                 "classification")
    assert "labels.csv" in msg and "row 3 column 'y': value '2' is not 0/1" in msg


def test_target_names_missing_column(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path), "classification", target_names=["x", "edema"])
    assert "labels.csv" in msg and "missing target column(s) edema" in msg
    assert "columns present: x, y" in msg


def test_multi_class_unknown_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels="id,label\na,cat\nb,dog\nc,cow\nd,cat\n")
    msg = _error(root, "classification", target_names=["cat", "dog"])
    assert "labels.csv" in msg and "row 4: unknown class 'cow'" in msg and "cat, dog" in msg


def test_multi_class_several_columns(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path), "classification", multi_label=False)
    assert "labels.csv" in msg and "single 'label' column" in msg


def test_masks_dir_missing(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, labels=None), "segmentation")
    assert "masks: missing" in msg and "segmentation needs" in msg


def test_image_without_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels=None, masks=True)
    (root / "masks" / "c.png").unlink()
    msg = _error(root, "promptable")
    assert "masks" in msg and "no mask for 1 image(s): images/c.png" in msg


def test_mask_without_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels=None, masks=True)
    _mask(root / "masks" / "e.png")
    msg = _error(root, "segmentation")
    assert "e.png" in msg and "mask without an image" in msg


def test_metadata_without_id(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, metadata="case,site\na,A\n"), "classification")
    assert "metadata.csv" in msg and "no 'id' column" in msg


def test_metadata_unknown_id(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, metadata="id,site\na,A\nq,B\n"), "classification")
    assert "metadata.csv" in msg and "unknown id 'q' in metadata.csv row 3" in msg


def test_metadata_bad_spacing(tmp_path: Path) -> None:
    msg = _error(make_folder(tmp_path, metadata="id,pixel_spacing\na,0.7\nb,thin\n"),
                 "classification")
    assert "metadata.csv" in msg and "row 3: cannot parse pixel_spacing 'thin'" in msg


def test_open_dataset_missing_path(tmp_path: Path) -> None:
    with pytest.raises(MedfailInputError, match=r"gone\.npz: dataset not found"):
        open_dataset(tmp_path / "gone.npz", "classification")


def test_open_dataset_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "data.h5").write_bytes(b"x")
    with pytest.raises(MedfailInputError, match=r"data\.h5: unsupported dataset"):
        open_dataset(tmp_path / "data.h5", "classification")


def test_open_dataset_split_on_folder(tmp_path: Path) -> None:
    with pytest.raises(MedfailInputError, match="split 'test' applies to MedMNIST"):
        open_dataset(make_folder(tmp_path), "classification", split="test")


# ---------------------------------------------------------------------------- validate()


def test_validate_unreadable_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    ds = FolderDataset(root, "classification")  # structure is fine; pixels are not read yet
    data = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedfailInputError, match=r"b\.png: cannot read image"):
        ds.validate(progress=False)


def test_validate_unreadable_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels=None, masks=True)
    (root / "masks" / "c.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(MedfailInputError, match=r"c\.png: cannot read mask"):
        FolderDataset(root, "segmentation").validate(progress=False)


def test_validate_mask_shape_mismatch(tmp_path: Path) -> None:
    root = make_folder(tmp_path, labels=None, masks=True)
    _mask(root / "masks" / "d.png", shape=(8, 9))
    ds = FolderDataset(root, "segmentation")
    with pytest.raises(MedfailInputError) as info:
        ds.validate(progress=False)
    msg = str(info.value)
    assert "d.png" in msg and "mask shape (8, 9) does not match image shape (8, 10)" in msg
