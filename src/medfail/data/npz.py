"""MedMNIST ``.npz`` files as a dataset (2D classification only).

A MedMNIST file holds ``{train,val,test}_images`` ((N, H, W) or (N, H, W, 3) uint8) and
``{train,val,test}_labels`` ((N, 1) class indices = multi-class, or (N, K) 0/1 = multi-label).
Sample ids are ``<split>_<index>`` zero-padded to at least 5 digits (``test_00042``), so they sort
in index order. Opening reads only the array headers and the labels; images are memory-mapped
when the member is stored uncompressed (``np.savez``), otherwise the split's image array is
decompressed once on first use.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medfail.data.base import SampleStream
from medfail.data.readers import intensity_range
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)


def _member_header(path: Path, zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype,
                                                                      bool, int | None]:
    """Shape, dtype, fortran order and (when stored uncompressed) the file offset of the data."""
    info = zf.getinfo(f"{key}.npy")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise MedfailInputError(path, f"cannot read '{key}' (npy format {version})")
        header_len = fh.tell()
    offset = None
    if info.compress_type == zipfile.ZIP_STORED and not dtype.hasobject:
        with path.open("rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + header_len
    return tuple(int(n) for n in shape), dtype, bool(fortran), offset


class NpzDataset(SampleStream):
    """One split of a MedMNIST ``.npz`` file, with the same interface as ``FolderDataset``.

    Args:
        root: the ``.npz`` file.
        task: must be ``"classification"`` (MedMNIST has no masks).
        target_names: names for the label columns/classes; default ``class_0..`` (multi-class)
            or ``label_0..`` (multi-label).
        multi_label: force the label kind; ``None`` = multi-label iff labels have > 1 column.
        split: ``"train"``, ``"val"`` or ``"test"`` (keyword only).

    ``mask_mode_info`` is always ``None`` (no masks; see :mod:`medfail.data.masks`).
    """

    mask_mode_info: dict[str, object] | None = None

    def __init__(
        self,
        root: str | Path,
        task: str = "classification",
        target_names: Sequence[str] | None = None,
        multi_label: bool | None = None,
        *,
        split: str = "test",
    ) -> None:
        self.root = Path(root)
        path = self.root
        if task != "classification":
            raise MedfailInputError(
                path, f"MedMNIST .npz files hold classification labels only; task '{task}' "
                "needs the folder format (images/ + masks/)")
        self.task = task
        if not path.is_file():
            raise MedfailInputError(path, "file not found")
        try:
            with zipfile.ZipFile(path) as zf:
                keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
                image_key, label_key = f"{split}_images", f"{split}_labels"
                if split not in SPLITS or image_key not in keys or label_key not in keys:
                    raise MedfailInputError(
                        path, f"unknown split '{split}' (expected {image_key} and {label_key}; "
                        f"keys present: {', '.join(keys) or 'none'})")
                shape, dtype, fortran, offset = _member_header(path, zf, image_key)
            with np.load(path, allow_pickle=False) as npz:
                labels = np.asarray(npz[label_key])
        except MedfailInputError:
            raise
        except Exception as exc:
            raise MedfailInputError(path, f"cannot read npz ({exc})") from exc
        self.split = split
        self._image_key = image_key
        self._layout = self._check_images(shape, dtype)
        self._shape, self._dtype, self._fortran, self._offset = shape, dtype, fortran, offset
        self._images: np.ndarray | None = None
        n = shape[0]
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != n:
            raise MedfailInputError(
                path, f"{label_key} has shape {labels.shape}; expected ({n}, 1) class indices or "
                f"({n}, K) 0/1 columns to match {image_key} {shape}")
        if labels.dtype.kind not in "buif":
            raise MedfailInputError(path, f"{label_key} has non-numeric dtype {labels.dtype}")
        self.multi_label = labels.shape[1] > 1 if multi_label is None else bool(multi_label)
        width = max(5, len(str(max(n - 1, 0))))
        self.ids: list[str] = [f"{split}_{i:0{width}d}" for i in range(n)]
        self._index = {sid: i for i, sid in enumerate(self.ids)}
        self._labels = self._parse_labels(labels, label_key, target_names)
        self.metadata = pd.DataFrame(index=pd.Index(self.ids, name="id"))

    def _check_images(self, shape: tuple[int, ...], dtype: np.dtype) -> str:
        """The image layout: ``"NHW"``, ``"NHWC"`` or ``"NCHW"``; 3D and odd shapes raise."""
        key = self._image_key
        if dtype.kind not in "buif":
            raise MedfailInputError(self.root, f"{key} has non-numeric dtype {dtype}")
        if len(shape) == 3:
            return "NHW"
        if len(shape) == 4 and shape[-1] in (1, 3, 4):
            return "NHWC"
        if len(shape) == 4 and shape[1] <= 3:
            return "NCHW"
        if len(shape) >= 4:
            raise MedfailInputError(
                self.root, f"3D MedMNIST not supported yet ({key} shape {shape}); use a 2D flag")
        raise MedfailInputError(
            self.root, f"{key} has shape {shape}; expected (N, H, W) or (N, H, W, 3)")

    def _parse_labels(
        self, labels: np.ndarray, key: str, target_names: Sequence[str] | None
    ) -> np.ndarray:
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise MedfailInputError(self.root, f"{key} has non-integer values")
        labels = labels.astype(np.int64)
        if self.multi_label:
            bad = np.argwhere((labels != 0) & (labels != 1))
            if len(bad):
                i, k = bad[0]
                raise MedfailInputError(
                    self.root, f"{key}[{i}, {k}] = {labels[i, k]} is not 0/1 (multi-label)")
            k = labels.shape[1]
            names = [f"label_{j}" for j in range(k)] if target_names is None else list(
                target_names)
            if len(names) != k:
                raise MedfailInputError(
                    self.root, f"{key} has {k} label columns but {len(names)} target names "
                    f"were given ({', '.join(names)})")
            self.target_names = names
            return labels.astype(np.float32)
        if labels.shape[1] != 1:
            raise MedfailInputError(
                self.root, f"{key} has {labels.shape[1]} columns; multi-class labels need one")
        labels = labels[:, 0]
        if len(labels) and labels.min() < 0:
            i = int(np.argmin(labels))
            raise MedfailInputError(self.root, f"{key}[{i}] = {labels[i]} is a negative class")
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        if target_names is None:
            self.target_names = [f"class_{j}" for j in range(n_classes)]
        else:
            self.target_names = list(target_names)
            if n_classes > len(self.target_names):
                i = int(np.argmax(labels))
                raise MedfailInputError(
                    self.root, f"{key}[{i}] = {labels[i]} is out of range for "
                    f"{len(self.target_names)} target names ({', '.join(self.target_names)})")
        return labels

    def __getstate__(self) -> dict[str, object]:
        """Pickle without the (memory-mapped or decompressed) image array; it reloads lazily."""
        return {**self.__dict__, "_images": None}

    # ------------------------------------------------------------------------------ pixels

    def _array(self) -> np.ndarray:
        if self._images is None:
            if self._offset is not None:
                self._images = np.memmap(
                    self.root, dtype=self._dtype, mode="r", offset=self._offset,
                    shape=self._shape, order="F" if self._fortran else "C")
            else:
                with np.load(self.root, allow_pickle=False) as npz:
                    self._images = npz[self._image_key]
        return self._images

    def _image(self, index: int) -> np.ndarray:
        img = np.asarray(self._array()[index])
        if self._layout == "NHW":
            img = img[None]
        elif self._layout == "NHWC":
            img = np.moveaxis(img, -1, 0)
        return img

    def _position(self, id: str) -> int:
        try:
            return self._index[id]
        except KeyError:
            raise KeyError(f"unknown sample id {id!r}") from None

    # ------------------------------------------------------------------------------ access

    def load(self, id: str) -> Sample:
        """One image with its label (no mask, spacing or metadata in MedMNIST)."""
        index = self._position(id)
        img = self._image(index)
        value_range, integer = intensity_range(img, f"{self.root}:{self.image_relpath(id)}")
        label = self._labels[index]
        return Sample(
            id=id,
            image=np.ascontiguousarray(img, dtype=np.float32),
            value_range=value_range,
            integer=integer,
            label=label.copy() if self.multi_label else np.array(label, dtype=np.int64),
            spacing=None,
            modality="RGB" if img.shape[0] == 3 else "",
        )

    def validate(self, progress: bool = True) -> None:
        """Decode the split's images once; raise on unreadable data or NaN/inf pixels."""
        try:
            images = self._array()
        except Exception as exc:
            raise MedfailInputError(
                self.root, f"cannot read {self._image_key} ({exc})") from exc
        step = 4096
        for start in tqdm(range(0, len(images), step), desc=f"checking {self.root.name}",
                          unit="chunk", disable=not progress):
            chunk = np.asarray(images[start : start + step])
            if chunk.dtype.kind == "f" and not np.all(np.isfinite(chunk)):
                i = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
                raise MedfailInputError(
                    self.root, f"{self._image_key}[{i}] contains NaN or infinite values")

    def image_relpath(self, id: str) -> str:
        """Where the image lives inside the file, e.g. ``test_images[42]``."""
        return f"{self._image_key}[{self._position(id)}]"

    def mask_relpath(self, id: str) -> str:
        """MedMNIST has no masks: always ``ValueError``."""
        raise ValueError("MedMNIST .npz datasets have no masks")

    def content_hash(self) -> str:
        """sha256 over the split name, the file name and the file bytes."""
        digest = hashlib.sha256()
        digest.update(f"split={self.split}\0{self.root.name}\0".encode())
        with self.root.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def download_medmnist(flag: str, root: Path, size: int = 28) -> Path:
    """Download a 2D MedMNIST file (all splits) into ``root``; returns the ``.npz`` path.

    Needs the optional ``medmnist`` package (``pip install medfail[medmnist]``) and network
    access. An already-downloaded file is reused.
    """
    try:
        import medmnist
        from medmnist import INFO
    except ImportError as exc:
        raise ImportError(
            "downloading MedMNIST needs the optional 'medmnist' package: "
            "pip install medfail[medmnist]") from exc
    flag = flag.lower()
    if flag not in INFO:
        raise MedfailInputError(
            None, f"unknown MedMNIST flag '{flag}' (available: {', '.join(sorted(INFO))})")
    if flag.endswith("3d"):
        raise MedfailInputError(None, f"3D MedMNIST not supported yet ('{flag}')")
    if size not in MEDMNIST_SIZES:
        raise MedfailInputError(
            None, f"MedMNIST size {size} not available (choose {MEDMNIST_SIZES})")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    if not target.is_file():
        data_class = getattr(medmnist, INFO[flag]["python_class"])
        data_class(split="test", download=True, root=str(root), size=size)
    if not target.is_file():
        raise MedfailInputError(target, "MedMNIST download did not produce this file")
    return target
