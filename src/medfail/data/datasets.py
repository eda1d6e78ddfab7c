"""Open any supported dataset, and the interface every dataset shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from medfail.data.folder import FolderDataset
from medfail.data.npz import NpzDataset
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError


@runtime_checkable
class Dataset(Protocol):
    """What the engine needs from a dataset (``FolderDataset`` and ``NpzDataset`` provide it).

    ``ids`` are sorted and unique; ``target_names`` are the classification targets (empty for
    segmentation unless given); ``metadata`` is indexed by id (it may have no columns).
    """

    root: Path
    task: str
    ids: list[str]
    target_names: list[str]
    multi_label: bool
    metadata: pd.DataFrame

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Sample]: ...

    def load(self, id: str) -> Sample:
        """Decode one sample."""
        ...

    def batches(self, batch_size: int) -> Iterator[list[Sample]]:
        """Samples in id order, ``batch_size`` at a time."""
        ...

    def validate(self, progress: bool = True) -> None:
        """Decode everything once; raise ``MedfailInputError`` on bad data."""
        ...

    def image_relpath(self, id: str) -> str:
        """Where the image lives, relative to ``root`` (never an absolute path)."""
        ...

    def mask_relpath(self, id: str) -> str:
        """Where the mask lives, relative to ``root``; ``ValueError`` when there are no masks."""
        ...

    def content_hash(self) -> str:
        """sha256 of the data this dataset reads."""
        ...


def open_dataset(
    path: str | Path,
    task: str,
    split: str | None = None,
    target_names: Sequence[str] | None = None,
    multi_label: bool | None = None,
    mask_mode: str = "auto",
) -> FolderDataset | NpzDataset:
    """A ``.npz`` file -> :class:`NpzDataset` (``split`` defaults to ``"test"``); a folder ->
    :class:`FolderDataset` (which has no splits: passing ``split`` is an error). ``mask_mode``:
    how masks are read (``auto``, ``binary``, ``classes``, ``instances``; see
    :mod:`medfail.data.masks`)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        if mask_mode != "auto":
            raise MedfailInputError(
                path, f"--mask-mode {mask_mode} applies to mask folders; MedMNIST .npz files "
                "have no masks")
        return NpzDataset(path, task, target_names, multi_label, split=split or "test")
    if path.is_dir():
        if split is not None:
            raise MedfailInputError(
                path, f"split '{split}' applies to MedMNIST .npz files only; a dataset folder is "
                "one split (point at the split's folder instead)")
        return FolderDataset(path, task, target_names, multi_label, mask_mode=mask_mode)
    if not path.exists():
        raise MedfailInputError(path, "dataset not found")
    raise MedfailInputError(
        path, "unsupported dataset (expected a folder with images/ or a MedMNIST .npz file)")
