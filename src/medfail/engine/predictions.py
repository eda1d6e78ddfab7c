"""The ``predictions/`` folder of a run directory: raw outputs per condition.

Layout (documented for users in docs/run_directory.md):

* ``predictions/index.parquet`` - one row per sample: ``id``, ``image`` and ``mask`` (paths
  relative to the data folder), ``height``, ``width``, ``spacing`` (mm, or null).
* classification: ``predictions/<condition>.parquet`` - long table with ``id, condition, test,
  family, severity, target, prob, label`` (label is 0/1; multi-class labels are one-hot).
* segmentation / promptable: ``predictions/<condition>.npz`` - one float16 array per sample id,
  shaped ``(C - 1, H, W)``: the foreground class probabilities at the mask's native size
  (background = 1 - their sum). ``numpy.load`` opens it; the predicted label map is the argmax
  over ``[background, foreground...]`` (ties go to the lower class index, so binary = ``p > 0.5``).
  Metrics are computed from these stored float16 values, so anyone can recompute them exactly.
* promptable: ``predictions/prompts.parquet`` - the prompts given per sample and object.

Each file is written to a temporary name and renamed when complete: a crash never leaves a
half-written file that looks finished.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

PREDICTIONS = "predictions"


def condition_path(run_dir: Path, condition: str, task: str) -> Path:
    suffix = ".parquet" if task == "classification" else ".npz"
    return Path(run_dir) / PREDICTIONS / f"{condition}{suffix}"


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a parquet file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


class MapWriter:
    """Streams per-sample probability maps into an ``.npz`` (memory bounded by one map)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=1)

    def add(self, sample_id: str, foreground: np.ndarray) -> None:
        with self._zip.open(f"{sample_id}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(foreground, dtype=np.float16))

    def close(self) -> None:
        self._zip.close()
        self._tmp.replace(self.path)

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


def quantise(probs: np.ndarray) -> np.ndarray:
    """Foreground channels of (C, H, W) probabilities as the stored float16 values."""
    return probs[1:].astype(np.float16)


def label_map(foreground: np.ndarray) -> np.ndarray:
    """Predicted class per pixel from stored (C - 1, H, W) foreground probabilities."""
    fg = foreground.astype(np.float32)
    full = np.concatenate([1.0 - fg.sum(axis=0, keepdims=True), fg])
    return np.argmax(full, axis=0)
