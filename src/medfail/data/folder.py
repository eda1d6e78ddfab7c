"""The medfail folder format.

::

    DIR/images/<id>.<png|jpg|jpeg|tif|tiff|dcm|nii|nii.gz|npy>
    DIR/images/<id>/    volumes only: the DICOM slices of one series (any file names)
    DIR/labels.csv      classification: ``id`` + one 0/1 column per target (multi-label)
                        or ``id`` + ``label`` (multi-class; class names or integer indices)
    DIR/masks/<id>.<ext>    segmentation / promptable: 0/1 or 0/255 binary, class label map or
                            instance map, 0 = background (read as ``mask_mode`` says, see
                            :mod:`medfail.data.masks`)
    DIR/metadata.csv    optional: ``id`` + free columns (site, protocol, pixel_spacing, ...)

Structure, labels and metadata are checked when the dataset is opened (cheap: no pixel is read);
:meth:`FolderDataset.validate` then decodes every image and mask once. The mask mode is decided
once, from every mask, when it is first needed (``mask_mode_info``, :meth:`FolderDataset.load`,
:meth:`FolderDataset.validate`, :meth:`FolderDataset.check_mask_labels`), and printed as one
line. The effective bit depth of 16-bit (wider than 8-bit) PNG/TIFF images is decided once
likewise, from every such image (``intensity_info``; :func:`decide_bit_depth`), and said in one
line when it is below the files' bit depth. All of these raise
:class:`~medfail.errors.MedfailInputError` naming the file and the problem. Row numbers in
messages count the header as row 1, as a spreadsheet shows them.

Spacing precedence: the image header (DICOM PixelSpacing, NIfTI zooms), else the ``pixel_spacing``
column of metadata.csv (``0.7``, ``0.7x0.7`` or ``0.7,0.7``; ``row x col`` mm; volumes:
``0.7x0.7x2.5`` in canonical ``x y z`` order), else ``None``.

Volumes (docs/data.md, "Volumes"; :mod:`medfail.data.volumes`): ``images/`` holds either 2D
images or volumes (3D NIfTI files and/or DICOM-series folders), never both
(:attr:`FolderDataset.spatial_dims`, decided from headers when the dataset is opened). A volume
is read as float32 ``(1, X, Y, Z)`` in canonical RAS+ order with ``Sample.geometry``; its mask
is a 3D NIfTI file ``masks/<id>.nii[.gz]`` on the same grid (shape, and affine within
:data:`~medfail.data.volumes.AFFINE_TOLERANCE_MM` after canonicalisation), else refused naming
both files. Masks are read in the same canonical order. Only one volume is decoded at a time.

Effective bit depth (docs/data.md, Intensities): unsigned PNG/TIFF pixels of bit depth ``b > 8``
are read onto the 0..255 scale by ``b`` (:mod:`medfail.data.readers`), but many 16-bit files hold
8- or 12-bit values. Per bit depth ``b``, ``e`` = the bits the largest stored value of the
dataset's ``b``-bit images needs (at least 8, at most ``b``), and their samples get
``value_range = (0, 255 * (2**e - 1) / (2**b - 1))``, so stress severities are relative to the
bits in use. The pixels are not changed. It is decided from the same files whichever path decides
it (:meth:`FolderDataset.validate`, or the first :meth:`FolderDataset.load`, which then decodes
only the images whose header allows more than 8 bits), and travels with the pickled dataset.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medfail.data.base import SampleStream
from medfail.data.masks import (
    MaskStats,
    check_mode,
    check_model_labels,
    decide,
    interpret,
    mask_stats,
)
from medfail.data.readers import (
    MIN_EFFECTIVE_BITS,
    ImageRead,
    effective_bits,
    effective_range,
    image_id,
    image_suffix,
    is_supported,
    may_exceed_8_bits,
    read_image,
    read_mask,
    spatial_dims,
    supported_list,
)
from medfail.data.sample import Sample
from medfail.data.volumes import check_same_grid, looks_like_dicom, mask_geometry, series_files
from medfail.errors import MedfailInputError, listing

TASKS: tuple[str, ...] = ("classification", "segmentation", "promptable")
MASK_TASKS: tuple[str, ...] = ("segmentation", "promptable")
_TRUE = {"1", "1.0", "true"}
_FALSE = {"0", "0.0", "false"}


def parse_spacing(value: Any, dims: int = 2) -> tuple[float, ...] | None:
    """Parse a ``pixel_spacing`` cell: ``0.7``, ``"0.7x0.7"``, ``"0.7,0.7"`` -> ``(row, col)`` mm;
    with ``dims=3`` (volumes) ``"0.7x0.7x2.5"`` -> ``(x, y, z)`` mm (one value: isotropic).

    Empty cells give ``None``; anything else unparsable, non-positive or with another number of
    values than ``dims`` raises ``ValueError``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        parts = [float(value)]
    else:
        text = str(value).strip()
        if not text or text.lower() in ("nan", "none", "na"):
            return None
        parts = [float(p) for p in re.split(r"\s*[x×X,;]\s*|\s+", text.strip("()[]")) if p]
    if len(parts) == 1:
        parts = parts * dims
    if len(parts) != dims or not all(math.isfinite(p) and p > 0 for p in parts):
        raise ValueError(f"bad spacing {value!r}")
    return tuple(parts)


def decide_bit_depth(files: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """The dataset's effective bit depths from ``(bits, raw_max)`` of each image (module
    docstring). Returns ``{"depths": [...], "message": str | None}``: one entry per container
    depth ``b > 8`` (``bits``, ``effective_bits``, ``raw_max``, ``n_images``, ``value_range``),
    and the console line when some ``e < b``."""
    groups: dict[int, list[int]] = {}
    for bits, raw_max in files:
        if bits > MIN_EFFECTIVE_BITS:
            groups.setdefault(int(bits), []).append(int(raw_max))
    depths, parts = [], []
    for bits in sorted(groups):
        top = max(groups[bits])
        e = effective_bits(top, bits)
        lo, hi = effective_range(bits, e)
        depths.append({"bits": bits, "effective_bits": e, "raw_max": top,
                       "n_images": len(groups[bits]), "value_range": [lo, hi]})
        if e < bits:
            parts.append(f"{bits}-bit files holding {e}-bit values (max {top}) -> stress scale "
                         f"0..{2**e - 1} raw (0..{hi:.2f} on medfail's 8-bit scale)")
    return {"depths": depths, "message": "images: " + "; ".join(parts) if parts else None}


def _parse_int(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


class FolderDataset(SampleStream):
    """A dataset in the medfail folder format (see the module docstring).

    Args:
        root: the dataset folder.
        task: ``"classification"``, ``"segmentation"`` or ``"promptable"``.
        target_names: the model's targets. Multi-label: columns of labels.csv to use (all must be
            present). Multi-class: class names the ``label`` values map onto (a value matches a
            name, else an integer value is taken as the class index). ``None``: inferred.
        multi_label: force the label kind; ``None`` = multi-class when the only target column is
            ``label``, multi-label (0/1 columns) otherwise.
        mask_mode: how mask values are read: ``"auto"`` (decided from the masks), ``"binary"``,
            ``"classes"`` or ``"instances"`` (see :mod:`medfail.data.masks`).

    Inferred target names: multi-label = target columns in file order; multi-class = sorted
    unique class names, or, when every value is an integer, ``"0".."max"`` with the value as the
    class index (so a class missing from this split does not shift the others).
    """

    def __init__(
        self,
        root: str | Path,
        task: str,
        target_names: Sequence[str] | None = None,
        multi_label: bool | None = None,
        mask_mode: str = "auto",
    ) -> None:
        self.root = Path(root)
        if task not in TASKS:
            raise MedfailInputError(
                self.root, f"unknown task '{task}' (choose {', '.join(TASKS)})")
        self.task = task
        self.mask_mode = check_mode(mask_mode, self.root)
        if task not in MASK_TASKS and mask_mode != "auto":
            raise MedfailInputError(
                self.root, f"--mask-mode {mask_mode} applies to segmentation and promptable "
                "masks; a classification dataset has none")
        self._mask_stats: dict[str, MaskStats] = {}
        self._mask_info: dict[str, Any] | None = None
        self._depth: dict[str, tuple[int, int] | None] = {}  # id -> (bits, raw_max) when b > 8
        self._intensity_info: dict[str, Any] | None = None
        if not self.root.exists():
            raise MedfailInputError(self.root, "dataset folder not found")
        if not self.root.is_dir():
            raise MedfailInputError(
                self.root, "not a folder (expected a dataset folder with images/, or a .npz file)")
        self._images = self._scan("images", "images/<id>.<ext>")
        self.ids: list[str] = sorted(self._images)
        self._spatial_dims = self._decide_dims()
        self._masks: dict[str, Path] = {}
        if task in MASK_TASKS:
            self._masks = self._scan_masks()
        self.target_names: list[str] = list(target_names) if target_names is not None else []
        self.multi_label: bool = False
        self._labels: dict[str, np.ndarray] = {}
        if task == "classification":
            self._read_labels(target_names, multi_label)
        self.metadata: pd.DataFrame
        self._meta_rows: dict[str, dict[str, Any]] = {}
        self._spacing: dict[str, tuple[float, ...]] = {}
        self._read_metadata()

    # ------------------------------------------------------------------------------ structure

    def _scan(self, sub: str, pattern: str) -> dict[str, Path]:
        folder = self.root / sub
        if not folder.is_dir():
            raise MedfailInputError(
                folder, f"missing (the folder format needs DIR/{pattern}; "
                f"supported: {supported_list()})")
        found: dict[str, Path] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue  # .DS_Store, editor files
            if entry.is_dir():
                if sub != "images" or not self._is_series(entry):
                    raise MedfailInputError(
                        entry, f"unexpected folder ({sub}/ must hold one file per sample"
                        + (", or one folder of DICOM slices per volume" if sub == "images"
                           else "") + ")")
                if entry.name in found:
                    raise MedfailInputError(
                        folder, f"duplicate id '{entry.name}': {found[entry.name].name} and "
                        f"{entry.name}/")
                found[entry.name] = entry
                continue
            if not is_supported(entry):
                raise MedfailInputError(
                    entry, f"unsupported file type '{image_suffix(entry) or entry.name}' "
                    f"(supported: {supported_list()})")
            sid = image_id(entry)
            if sid in found and found[sid].is_dir():
                raise MedfailInputError(
                    folder, f"duplicate id '{sid}': {sid}/ and {entry.name}")
            if sid in found:
                raise MedfailInputError(
                    folder, f"duplicate id '{sid}': {found[sid].name} and {entry.name}")
            found[sid] = entry
        if not found:
            raise MedfailInputError(
                folder, f"no {sub[:-1]} files found (supported: {supported_list()})")
        return found

    @staticmethod
    def _is_series(entry: Path) -> bool:
        """A folder in images/ is a DICOM series when its first visible file looks like DICOM
        (the slices are checked when the volume is read)."""
        files = series_files(entry)
        return bool(files) and looks_like_dicom(files[0])

    def _decide_dims(self) -> int:
        """2 or 3 from the images' headers; a dataset mixing 2D images and volumes is refused."""
        dims: dict[int, str] = {}
        for sid in self.ids:
            dims.setdefault(spatial_dims(self._images[sid]), sid)
        if len(dims) > 1:
            flat, volume = self.image_relpath(dims[2]), self.image_relpath(dims[3])
            raise MedfailInputError(
                self.root / "images", f"mixes 2D images and 3D volumes ({flat} is 2D, {volume} "
                "is 3D); a dataset holds one kind")
        return next(iter(dims))

    @property
    def spatial_dims(self) -> int:
        """2 (images ``(C, H, W)``) or 3 (volumes ``(C, X, Y, Z)``), from the image headers."""
        return self._spatial_dims

    def _scan_masks(self) -> dict[str, Path]:
        masks_dir = self.root / "masks"
        if not masks_dir.is_dir():
            raise MedfailInputError(
                masks_dir, f"missing ({self.task} needs DIR/masks/<id>.<ext>: one integer label "
                "map per image, 0 = background)")
        masks = self._scan("masks", "masks/<id>.<ext>")
        orphans = sorted(set(masks) - set(self._images))
        if orphans:
            raise MedfailInputError(
                masks[orphans[0]], f"mask without an image (no images/{orphans[0]}.*"
                + (f"; also {listing(orphans[1:])}" if len(orphans) > 1 else "") + ")")
        missing = [self.image_relpath(i) for i in self.ids if i not in masks]
        if missing:
            raise MedfailInputError(
                masks_dir, f"no mask for {len(missing)} image(s): {listing(missing)} "
                "(expected masks/<id>.<ext>)")
        return masks

    # ------------------------------------------------------------------------------ labels.csv

    def _read_labels(self, target_names: Sequence[str] | None, multi_label: bool | None) -> None:
        path = self.root / "labels.csv"
        if not path.is_file():
            raise MedfailInputError(
                path, "missing (classification needs labels.csv with an 'id' column and either "
                "one 0/1 column per target or a single 'label' column)")
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = [h.strip() for h in next(reader, [])]
                rows = [(reader.line_num, [c.strip() for c in r]) for r in reader
                        if any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MedfailInputError(path, f"cannot read labels.csv ({exc})") from exc
        if not header:
            raise MedfailInputError(path, "empty file (expected a header row starting with 'id')")
        if "id" not in header:
            raise MedfailInputError(
                path, f"no 'id' column (columns: {', '.join(header)}); the id is the image file "
                "name without suffix")
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise MedfailInputError(path, f"duplicate column(s): {', '.join(dup)}")
        id_col = header.index("id")
        targets = [h for h in header if h != "id"]
        if not targets:
            raise MedfailInputError(
                path, "no target columns (need one 0/1 column per target, or a 'label' column)")
        by_id: dict[str, tuple[int, dict[str, str]]] = {}
        for row_no, cells in rows:
            if len(cells) != len(header):
                raise MedfailInputError(
                    path, f"row {row_no} has {len(cells)} fields, the header has {len(header)}")
            sid = cells[id_col]
            if not sid:
                raise MedfailInputError(path, f"row {row_no}: empty id")
            if sid in by_id:
                raise MedfailInputError(
                    path, f"duplicate id '{sid}' in rows {by_id[sid][0]} and {row_no}")
            if sid not in self._images:
                hint = (f"; ids are file names without suffix, e.g. '{image_id(sid)}'"
                        if is_supported(sid) else "")
                raise MedfailInputError(
                    path, f"unknown id '{sid}' in labels.csv row {row_no} "
                    f"(no image images/{sid}.*{hint})")
            by_id[sid] = (row_no, dict(zip(header, cells, strict=True)))
        unlabelled = [self.image_relpath(i) for i in self.ids if i not in by_id]
        if unlabelled:
            raise MedfailInputError(
                path, f"no label for {len(unlabelled)} image(s): {listing(unlabelled)} "
                "(every image needs a row)")
        if multi_label is None:
            multi_label = targets != ["label"]
        self.multi_label = multi_label
        if multi_label:
            self._multi_label_targets(path, targets, target_names, by_id)
        else:
            if targets == ["label"] or len(targets) == 1:
                column = targets[0]
            else:
                raise MedfailInputError(
                    path, f"multi-class labels need a single 'label' column; found "
                    f"{', '.join(targets)}")
            self._multi_class_targets(path, column, target_names, by_id)

    def _multi_label_targets(
        self, path: Path, targets: list[str], target_names: Sequence[str] | None,
        by_id: dict[str, tuple[int, dict[str, str]]],
    ) -> None:
        if target_names is not None:
            absent = [t for t in target_names if t not in targets]
            if absent:
                raise MedfailInputError(
                    path, f"missing target column(s) {', '.join(absent)} the model predicts "
                    f"(columns present: {', '.join(targets)})")
            targets = list(target_names)
        self.target_names = targets
        for sid, (row_no, row) in by_id.items():
            vector = np.zeros(len(targets), np.float32)
            for k, column in enumerate(targets):
                value = row[column].lower()
                if value in _TRUE:
                    vector[k] = 1.0
                elif value not in _FALSE:
                    raise MedfailInputError(
                        path, f"row {row_no} column '{column}': value '{row[column]}' is not 0/1 "
                        "(multi-label columns hold 0 or 1; use a single 'label' column for "
                        "multi-class)")
            self._labels[sid] = vector

    def _multi_class_targets(
        self, path: Path, column: str, target_names: Sequence[str] | None,
        by_id: dict[str, tuple[int, dict[str, str]]],
    ) -> None:
        for row_no, row in by_id.values():
            if not row[column]:
                raise MedfailInputError(path, f"row {row_no} column '{column}': empty label")
        if target_names is None:
            ints = {v: _parse_int(v) for v in {row[column] for _, row in by_id.values()}}
            if all(i is not None for i in ints.values()):
                negative = sorted(v for v, i in ints.items() if i is not None and i < 0)
                if negative:
                    row_no = next(n for n, r in by_id.values() if r[column] == negative[0])
                    raise MedfailInputError(
                        path, f"row {row_no}: negative class index {negative[0]}")
                n_classes = max(i for i in ints.values() if i is not None) + 1
                self.target_names = [str(i) for i in range(n_classes)]
                index = {v: i for v, i in ints.items() if i is not None}
            else:
                self.target_names = sorted(ints)
                index = {name: k for k, name in enumerate(self.target_names)}
        else:
            self.target_names = list(target_names)
            index = {name: k for k, name in enumerate(self.target_names)}
        for sid, (row_no, row) in by_id.items():
            value = row[column]
            k = index.get(value)
            if k is None:
                as_int = _parse_int(value)
                if as_int is not None and 0 <= as_int < len(self.target_names):
                    k = as_int
            if k is None:
                raise MedfailInputError(
                    path, f"row {row_no}: unknown class '{value}' in column '{column}' "
                    f"(known classes: {listing(self.target_names, 10)})")
            self._labels[sid] = np.array(k, dtype=np.int64)

    # ------------------------------------------------------------------------------ metadata.csv

    def _read_metadata(self) -> None:
        path = self.root / "metadata.csv"
        index = pd.Index(self.ids, name="id")
        if not path.is_file():
            self.metadata = pd.DataFrame(index=index)
            return
        try:
            header = [str(c) for c in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns]
            id_col = next((c for c in header if c.strip() == "id"), None)
            if id_col is None:
                raise MedfailInputError(path, f"no 'id' column (columns: {', '.join(header)})")
            # only empty cells / "nan" are missing: a site called "NA" stays a string
            frame = pd.read_csv(path, dtype={id_col: str}, encoding="utf-8-sig",
                                keep_default_na=False, na_values=["", "nan", "NaN"])
        except MedfailInputError:
            raise
        except Exception as exc:
            raise MedfailInputError(path, f"cannot read metadata.csv ({exc})") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        frame["id"] = frame["id"].astype(str).str.strip()
        seen: dict[str, int] = {}
        for pos, sid in enumerate(frame["id"]):
            row_no = pos + 2
            if sid in seen:
                raise MedfailInputError(
                    path, f"duplicate id '{sid}' in rows {seen[sid]} and {row_no}")
            if sid not in self._images:
                raise MedfailInputError(
                    path, f"unknown id '{sid}' in metadata.csv row {row_no} "
                    f"(no image images/{sid}.*)")
            seen[sid] = row_no
        frame = frame.set_index("id").reindex(index)
        if "pixel_spacing" in frame.columns:
            for sid, value in frame["pixel_spacing"].items():
                try:
                    spacing = parse_spacing(value, self._spatial_dims)
                except ValueError:
                    use = "0.7, 0.7x0.7 or 0.7,0.7" if self._spatial_dims == 2 else \
                        "0.7 or 0.7x0.7x2.5 (x y z)"
                    raise MedfailInputError(
                        path, f"row {seen.get(str(sid), '?')}: cannot parse pixel_spacing "
                        f"'{value}' (use {use} in mm)") from None
                if spacing is not None:
                    self._spacing[str(sid)] = spacing
        self.metadata = frame
        for sid, row in frame.to_dict("index").items():
            self._meta_rows[str(sid)] = {str(k): _plain(v) for k, v in row.items()}

    # ------------------------------------------------------------------------------ access

    def image_relpath(self, id: str) -> str:
        """Path of the image file relative to :attr:`root` (posix), e.g. ``images/a.png``."""
        return self._path(self._images, id).relative_to(self.root).as_posix()

    def mask_relpath(self, id: str) -> str:
        """Path of the mask file relative to :attr:`root`; ``ValueError`` without masks."""
        if not self._masks:
            raise ValueError(f"a {self.task} dataset has no masks")
        return self._path(self._masks, id).relative_to(self.root).as_posix()

    @staticmethod
    def _path(files: dict[str, Path], id: str) -> Path:
        try:
            return files[id]
        except KeyError:
            raise KeyError(f"unknown sample id {id!r}") from None

    # ------------------------------------------------------------------------------ mask mode

    def _stats(self, id: str) -> MaskStats:
        if id not in self._mask_stats:
            self._mask_stats[id] = mask_stats(read_mask(self._masks[id]))
        return self._mask_stats[id]

    @property
    def mask_mode_info(self) -> dict[str, Any] | None:
        """How the masks are read (the record of :func:`medfail.data.masks.decide`), decided
        once from every mask and printed as one line; ``None`` for classification."""
        if not self._masks:
            return None
        if self._mask_info is None:
            files = [(self._masks[sid], self._stats(sid)) for sid in self.ids]
            self._mask_info = decide(files, self.mask_mode)
            print(f"{self._mask_info['message']} [{self.root.name}]")
        return self._mask_info

    def check_mask_labels(self, target_names: Sequence[str]) -> None:
        """Raise ``MedfailInputError`` naming the first mask with a label a model predicting
        ``target_names`` (labels 1..K) does not know (see
        :func:`medfail.data.masks.check_model_labels`)."""
        info = self.mask_mode_info
        if info is not None:
            check_model_labels([(self._masks[sid], self._stats(sid)) for sid in self.ids],
                               info, target_names)

    # ------------------------------------------------------------------------------ bit depth

    def _note_depth(self, id: str, image: ImageRead) -> None:
        if id not in self._depth:
            bits, top = image.bits, image.raw_max
            wide = bits is not None and top is not None and bits > MIN_EFFECTIVE_BITS
            self._depth[id] = (int(bits or 0), int(top or 0)) if wide else None

    @property
    def intensity_info(self) -> dict[str, Any]:
        """The effective bit depths (:func:`decide_bit_depth`), decided once from every image
        wider than 8 bits and printed as one line when some ``e < b``."""
        if self._intensity_info is None:
            for sid in self.ids:
                path = self._images[sid]
                if sid not in self._depth:
                    if may_exceed_8_bits(path):
                        self._note_depth(sid, read_image(path))
                    else:
                        self._depth[sid] = None
            info = decide_bit_depth(d for d in (self._depth[sid] for sid in self.ids) if d)
            self._intensity_info = info
            if info["message"]:
                print(f"{info['message']} [{self.root.name}]")
        return self._intensity_info

    def _value_range(self, image: ImageRead) -> tuple[float, float]:
        """``image.value_range``, narrowed to the dataset's effective bit depth."""
        if image.bits is None or image.bits <= MIN_EFFECTIVE_BITS:
            return image.value_range
        for depth in self.intensity_info["depths"]:
            if depth["bits"] == image.bits:
                lo, hi = depth["value_range"]
                return (float(lo), float(hi))
        return image.value_range  # pragma: no cover - every wide image is in a group

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (Ray workers, subprocesses) with the bit depth decided, so every process
        uses the same value without decoding the dataset again."""
        _ = self.intensity_info
        return self.__dict__.copy()

    # ------------------------------------------------------------------------------ samples

    def load(self, id: str) -> Sample:
        """Decode one sample (image, label or mask as the mask mode reads it, spacing,
        metadata); ``value_range`` follows the dataset's effective bit depth."""
        image = read_image(self._path(self._images, id))
        self._note_depth(id, image)
        value_range = self._value_range(image)
        mask = instances = None
        if self._masks:
            self._check_mask_grid(id, image)
            raw = read_mask(self._masks[id])
            self._check_mask_shape(id, raw.shape, image)
            info = self.mask_mode_info
            assert info is not None
            mask, instances = interpret(raw, info["mode"])
        spacing = image.spacing if image.spacing is not None else self._spacing.get(id)
        return Sample(
            id=id,
            image=image.array,
            value_range=value_range,
            integer=image.integer,
            label=self._labels[id].copy() if id in self._labels else None,
            mask=mask,
            spacing=spacing,
            modality=image.modality,
            metadata=dict(self._meta_rows.get(id, {})),
            instances=instances,
            geometry=image.geometry,
        )

    def _check_mask_grid(self, id: str, image: ImageRead) -> None:
        """A volume's mask: a 3D NIfTI on the image's grid (header only, nothing decoded)."""
        if image.geometry is None:
            return
        mask_path = self._masks[id]
        check_same_grid(mask_path, mask_geometry(mask_path), self._images[id], image.geometry,
                        self.mask_relpath(id), self.image_relpath(id))

    def _check_mask_shape(self, id: str, shape: tuple[int, ...], image: ImageRead) -> None:
        if tuple(shape) != image.array.shape[1:]:
            raise MedfailInputError(
                self._masks[id], f"mask shape {tuple(shape)} does not match image shape "
                f"{tuple(image.array.shape[1:])} ({self.image_relpath(id)})")

    def validate(self, progress: bool = True) -> None:
        """Decode every image (and mask) once; raise on the first unreadable or mismatched file,
        then decide the effective bit depth and the mask mode (from what was just decoded: no
        image or mask is decoded again)."""
        for sid in tqdm(self.ids, desc=f"checking {self.root.name}", unit="image",
                        disable=not progress):
            image = read_image(self._images[sid])
            self._note_depth(sid, image)
            if self._masks:
                self._check_mask_grid(sid, image)
                self._check_mask_shape(sid, self._stats(sid).shape, image)
            del image  # one volume at a time
        _ = self.intensity_info
        _ = self.mask_mode_info

    def content_hash(self) -> str:
        """sha256 over (relative path, bytes) of every file this dataset reads, sorted by path
        (and an explicit mask mode, which changes what the masks mean)."""
        files = [f for p in self._images.values() for f in (series_files(p) if p.is_dir()
                                                             else [p])]
        files += list(self._masks.values())
        for name in ("labels.csv", "metadata.csv"):
            if (self.root / name).is_file() and (name != "labels.csv" or self._labels):
                files.append(self.root / name)
        digest = hashlib.sha256()
        if self._masks and self.mask_mode != "auto":
            digest.update(f"mask_mode={self.mask_mode}\0".encode())
        for rel, path in sorted((p.relative_to(self.root).as_posix(), p) for p in files):
            digest.update(rel.encode() + b"\0")
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            with path.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values, NaN -> None (for Sample.metadata)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value
