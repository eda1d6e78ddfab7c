"""The ``predictions/`` folder of a run directory: raw outputs per condition.

Layout (documented for users in docs/run_directory.md):

* ``predictions/index.parquet`` - one row per sample: ``id``, ``image`` and ``mask`` (paths
  relative to the data folder), ``mask_sha256`` (sha256 of the mask file's bytes), ``height``,
  ``width`` (the first two spatial sizes), ``depth`` (volumes: the third, X Y Z order; null for
  2D images), ``spacing`` (mm per spatial axis, or null), ``modality`` and the GT mask features.
* segmentation / promptable: ``predictions/ground_truth.npz`` - the ground truth the metrics were
  computed against: one unsigned integer array per sample id, shaped ``(H, W)`` (volumes:
  ``(X, Y, Z)``), the mask as the dataset's mask mode read it (0 = background, k = the model's
  k-th foreground class; uint8, or uint16/uint32 when a label needs it).
  ``predictions/ground_truth_instances.npz``: the instance maps (same keys) when the masks are
  instance maps (``Sample.instances``). Written with ``ZIP_DEFLATED`` like
  ``numpy.savez_compressed``; ``numpy.load`` opens both.
* with ``--shift``: the same files for the second site's data, prefixed ``shift_data.``
  (``shift_data.index.parquet``, ``shift_data.ground_truth.npz``, ...): see :func:`split_paths`.
* classification: ``predictions/<condition>.parquet`` - long table with ``id, condition, test,
  family, severity, target, prob, label`` (label is 0/1; multi-class labels are one-hot).
* segmentation / promptable: ``predictions/<condition>.npz`` - one float16 array per sample id,
  shaped ``(C - 1, H, W)`` (volumes: ``(C - 1, X, Y, Z)``): the foreground class probabilities
  at the mask's native size (background = 1 - their sum). ``numpy.load`` opens it; the predicted
  label map is the argmax over ``[background, foreground...]`` (ties go to the lower class
  index, so binary = ``p > 0.5``). Metrics are computed from these stored float16 values, so
  anyone can recompute them exactly.
* promptable: ``predictions/prompts.parquet`` - the prompts given per sample and object.

Each file is written to a temporary name and renamed when complete: a crash never leaves a
half-written file that looks finished. The ``.npz`` files are streamed one array at a time
(:class:`NpzWriter`) and read one key at a time (:func:`npz_array`, :func:`npz_arrays`), so
memory is bounded by one sample (one volume), not by the dataset.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfail.rundir import (  # noqa: F401  (re-exported: paths are owned by medfail.rundir)
    PREDICTIONS,
    TEST_SPLIT,
    condition_path,
    file_sha256,
    label_map,
    split_paths,
    write_table,
)

#: compression of the ground-truth files (masks compress ~100x; as ``numpy.savez_compressed``)
GT_COMPRESSLEVEL = 6


class NpzWriter:
    """Streams arrays into an ``.npz`` one member at a time (memory bounded by one array).

    Members are written to ``<name>.tmp`` with ``numpy.lib.format.write_array`` inside a
    ``ZIP_DEFLATED`` zip (the format of ``numpy.savez_compressed``; ``numpy.load`` reads it, one
    key at a time); :meth:`close` renames the finished file to ``path``, :meth:`abort` deletes
    it: a crash never leaves a half-written file under the final name.
    """

    def __init__(self, path: Path, compresslevel: int = 1) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=compresslevel)
        self.keys: list[str] = []

    def add(self, key: str, array: np.ndarray) -> None:
        _add_member(self._zip, key, array)
        self.keys.append(key)

    def close(self) -> None:
        self._zip.close()
        self._tmp.replace(self.path)

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


class MapWriter(NpzWriter):
    """Streams per-sample probability maps (stored as float16) into an ``.npz``."""

    def add(self, sample_id: str, foreground: np.ndarray) -> None:
        super().add(sample_id, np.asarray(foreground, dtype=np.float16))


def _add_member(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    """Write ``array`` as member ``<key>.npy`` of an open zip (streamed, no pickles; a member
    named by a string gets zip's fixed 1980 timestamp, so equal arrays give equal bytes)."""
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def npz_arrays(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, array)`` of an ``.npz`` in stored order, read one member at a time (memory
    bounded by one array, unlike ``dict(numpy.load(path))``)."""
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            yield key, npz[key]


class NpzSequence(Sequence[np.ndarray]):
    """The arrays of an ``.npz`` as a read-only sequence in stored order, each read when
    indexed (memory: one array); use as a context manager to close the file."""

    def __init__(self, path: Path) -> None:
        self._npz = np.load(path, allow_pickle=False)
        self.keys = list(self._npz.files)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            return [self._npz[k] for k in self.keys[i]]
        return self._npz[self.keys[i]]

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> NpzSequence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def npz_array(path: Path, key: str) -> np.ndarray:
    """One member of an ``.npz`` (only that member is read and decompressed)."""
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def quantise(probs: np.ndarray) -> np.ndarray:
    """Foreground channels of (C, *spatial) probabilities as the stored float16 values."""
    return probs[1:].astype(np.float16)


def label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest of uint8 / uint16 / uint32 that holds the (non-negative integer) labels."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return np.dtype(np.uint8)
    if a.dtype.kind not in "iu":
        raise ValueError(f"a label map must hold integers, got dtype {a.dtype}")
    top = int(a.max()) if a.size else 0
    if a.size and int(a.min()) < 0:
        raise ValueError("a label map must not hold negative values")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {top} does not fit in uint32")


class _Spill:
    """An anonymous temporary file on disk (memory stays flat however much is written) that
    stays open until :meth:`release`: a buffer discarded unwritten (a run refused after the
    ground truth was read) may be finalised before its ZipFile, whose ``__del__`` then writes
    the end record into it instead of raising on a closed file."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  (open until release())

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def flush(self) -> None:
        self._file.flush()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def copy_to(self, path: Path) -> None:
        self._file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(self._file, out, 1 << 20)

    def release(self) -> None:
        self._file.close()


class _QuietZipFile(zipfile.ZipFile):
    """A ZipFile whose finaliser never raises: an archive dropped unwritten (a run refused after
    its ground truth was read) may be finalised after its spill file, and an exception raised
    during garbage collection surfaces in whatever code runs at that moment (seen:
    ``torch.jit.script`` failing with "AST constructor recursion depth mismatch")."""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # nothing to report to during collection
            self.close()


class NpzBuffer:
    """An ``.npz`` assembled before its place in the run directory is known (the manifest is
    written after the ground truth is read): members stream into an anonymous temporary file
    (memory: one array), and :meth:`write` copies it to its path atomically. ``numpy.load``
    reads the result."""

    def __init__(self, compresslevel: int = GT_COMPRESSLEVEL) -> None:
        self._buf = _Spill()
        self._zip = _QuietZipFile(self._buf, "w",  # type: ignore[call-overload]
                                    compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=compresslevel)
        self.keys: list[str] = []

    def add(self, key: str, array: np.ndarray) -> None:
        _add_member(self._zip, key, array)
        self.keys.append(key)

    def write(self, path: Path) -> None:
        """Finish the archive and write it to ``path`` (temporary name, then rename)."""
        self._zip.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self._buf.copy_to(tmp)
        tmp.replace(path)
        self._buf.release()


class GroundTruth:
    """Collects a split's ground truth (masks, and instance maps when the dataset keeps them)
    while its samples are read, to be written as ``ground_truth.npz`` /
    ``ground_truth_instances.npz`` once the run directory's manifest lists them."""

    def __init__(self) -> None:
        self.masks = NpzBuffer()
        self.instances = NpzBuffer()

    def add(self, sample_id: str, mask: np.ndarray | None,
            instances: np.ndarray | None = None) -> None:
        """Keep one sample's interpreted mask (and instance map) as the smallest unsigned type."""
        if mask is not None:
            m = np.asarray(mask)
            self.masks.add(sample_id, m.astype(label_dtype(m)))
        if instances is not None:
            i = np.asarray(instances)
            self.instances.add(sample_id, i.astype(label_dtype(i)))

    def paths(self, run_dir: Path, split: str = TEST_SPLIT) -> list[Path]:
        """The files :meth:`write` will write (list them in the manifest first)."""
        files = split_paths(run_dir, split)
        return [files[name] for name, buf in (("ground_truth", self.masks),
                                              ("instances", self.instances)) if buf.keys]

    def write(self, run_dir: Path, split: str = TEST_SPLIT) -> list[Path]:
        files = split_paths(run_dir, split)
        written = []
        for name, buf in (("ground_truth", self.masks), ("instances", self.instances)):
            if buf.keys:
                buf.write(files[name])
                written.append(files[name])
        return written


def metric_units(task: str, spacing_mm: bool, boundary_tolerance_px: float,
                 surface_tolerance_mm: float, band_px: float,
                 spatial_dims: int = 2) -> dict[str, dict[str, Any]]:
    """``run.json: metric_units``: the tolerance and unit of every distance-based metric.

    ``boundary_f1``: tolerance ``boundary_tolerance_px`` in px for 2D images (Boundary-F1@2px);
    for volumes with a spacing ``surface_tolerance_mm`` in mm (Boundary-F1@2mm), in voxels
    (``boundary_tolerance_px``, unit ``px``) without one;
    ``nsd``: ``surface_tolerance_mm`` in mm when every sample has a pixel spacing (``spacing_mm``),
    else ``boundary_tolerance_px`` in px; ``hd95``: mm when ``spacing_mm``, else px (clamped to
    the image diagonal in that unit); ``pixel_ece_band``: the band half-width in px (Euclidean).
    Empty for classification.
    """
    if task == "classification":
        return {}
    unit = "mm" if spacing_mm else "px"
    return {
        "boundary_f1": ({"tolerance": float(surface_tolerance_mm), "unit": "mm"}
                        if spacing_mm and spatial_dims == 3
                        else {"tolerance": float(boundary_tolerance_px), "unit": "px"}),
        "nsd": {"tolerance": float(surface_tolerance_mm if spacing_mm
                                   else boundary_tolerance_px), "unit": unit},
        "hd95": {"unit": unit, "clamp": "image diagonal"},
        "pixel_ece_band": {"band": float(band_px), "unit": "px"},
    }
