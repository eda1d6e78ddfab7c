"""The run directory's layout: every path medfail reads or writes inside it, in one place.

It also holds the readers (:func:`read_table`, :func:`read_run_json`, :func:`check_run_dir`:
failures name the file and how to recover), the atomic writers (:func:`write_table`,
:func:`write_atomic`), the stored-format helpers (:func:`label_map`,
:func:`per_target_thresholds`: ``run.json: thresholds`` is ``{target: float}``) and the manifest
(:class:`Manifest`: which files medfail wrote, for which configuration; section below).

This module sits at the ground floor (it imports only :mod:`medfail.errors`), so the engine,
the analyses and the report all build their paths here and nowhere else
(``medfail.engine.manifest`` and ``medfail.engine.predictions`` re-export some names). The
user-facing list is docs/run_directory.md; a test checks that every path pattern defined here
is documented there and vice versa (:data:`DOCUMENTED`).

Conventions: ``run_dir`` is the run directory; conditions are named as in ``run.json:
conditions`` (``clean``, ``gaussian_noise@2``, ``tta|clean``...); file names never depend on
anything else. Writers are atomic (temporary ``<name>.tmp``, then rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from medfail.errors import MedfailInputError, listing

#: medfail's own folder (the manifest) and the manifest, relative to the run directory
HOME = ".medfail"
MANIFEST = f"{HOME}/manifest.json"
#: ``--runtime onnxruntime``: the exported torch models, ``<key>.onnx`` (reused across runs)
ONNX_CACHE = f"{HOME}/onnx"
#: per-condition per-sample rows and timings (internal to ``medfail run``: commit markers)
PARTS = ".parts"
PREDICTIONS = "predictions"
FIGURES = "figures"
CASES = "cases"
RUN_JSON = "run.json"
PER_SAMPLE = "per_sample.parquet"
SLICES = "slices.parquet"
METRICS = "metrics.parquet"
RANKING = "ranking.parquet"
CALIBRATION = "calibration.parquet"
MITIGATIONS = "mitigations.parquet"
EVIDENCE = "evidence.parquet"
#: slice discovery (analysis/discovery.py): the slices found and confirmed, the per-sample
#: features and errors they were searched over, and the label-issue candidates (cleanlab)
DISCOVERY = "discovery.parquet"
DISCOVERY_FEATURES = "discovery_features.parquet"
LABEL_ISSUES = "label_issues.parquet"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
#: the failure explorer (every image × condition; thumbnails embedded, nothing beside it)
EXPLORER_HTML = "explorer.html"
CASES_JSON = f"{CASES}/cases.json"
#: small grey thumbnails of the samples the report shows for discovered slices and label issues
EXAMPLES = f"{CASES}/examples.npz"
#: the split whose files carry no prefix; other splits (``shift_data``) prefix their names
TEST_SPLIT = "test"
#: the stored predictions of the calibration split (classification), as a condition name
CALIBRATION_SPLIT = "calibration"
#: per-condition files in ``predictions/`` besides ``<condition>.parquet`` / ``.npz``
CONDITION_SUFFIXES = {
    "classification": (".parquet", ".evidence.parquet"),
    "segmentation": (".npz", ".prompts.parquet", ".confidence.parquet", ".pixel_bins.parquet",
                     ".evidence.parquet"),
}
#: the top-level tables ``medfail run`` writes (listed in the manifest before they are written)
TABLES = (PER_SAMPLE, METRICS, RANKING, CALIBRATION, MITIGATIONS, RUN_JSON, EVIDENCE,
          DISCOVERY, DISCOVERY_FEATURES, LABEL_ISSUES)
#: the tables ``medfail analyse`` rebuilds from the stored predictions
ANALYSIS_TABLES = (SLICES, METRICS, RANKING, CALIBRATION, MITIGATIONS, DISCOVERY,
                   DISCOVERY_FEATURES, LABEL_ISSUES)
#: every path pattern of a run directory (``<condition>``, ``<k>``, ``<split>`` placeholders);
#: docs/run_directory.md documents exactly these (tested)
DOCUMENTED = (
    MANIFEST, f"{ONNX_CACHE}/<key>.onnx", RUN_JSON, PER_SAMPLE, SLICES, METRICS, RANKING,
    CALIBRATION, MITIGATIONS, DISCOVERY, DISCOVERY_FEATURES, LABEL_ISSUES, EVIDENCE,
    REPORT_HTML, REPORT_PDF, EXPLORER_HTML, f"{FIGURES}/",
    CASES_JSON, f"{CASES}/case_<k>.npz", EXAMPLES,
    f"{PARTS}/<condition>.parquet", f"{PARTS}/<condition>.seconds",
    f"{PREDICTIONS}/index.parquet", f"{PREDICTIONS}/ground_truth.npz",
    f"{PREDICTIONS}/ground_truth_instances.npz", f"{PREDICTIONS}/<split>.index.parquet",
    f"{PREDICTIONS}/<split>.ground_truth.npz", f"{PREDICTIONS}/<split>.ground_truth_instances.npz",
    f"{PREDICTIONS}/prompts.parquet", f"{PREDICTIONS}/{CALIBRATION_SPLIT}.parquet",
    f"{PREDICTIONS}/metadata_slices.parquet", f"{PREDICTIONS}/embeddings.npz",
    f"{PREDICTIONS}/<condition>.parquet", f"{PREDICTIONS}/<condition>.npz",
    f"{PREDICTIONS}/<condition>.prompts.parquet", f"{PREDICTIONS}/<condition>.confidence.parquet",
    f"{PREDICTIONS}/<condition>.pixel_bins.parquet",
    f"{PREDICTIONS}/<condition>.evidence.parquet",
)


def table(run_dir: str | Path, name: str) -> Path:
    """A top-level file of the run directory (``run.json``, ``metrics.parquet``...)."""
    return Path(run_dir) / name


def onnx_cache_dir(run_dir: str | Path) -> Path:
    """Where ``--runtime onnxruntime`` keeps the exported torch models."""
    return Path(run_dir) / ONNX_CACHE


def predictions_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PREDICTIONS


def figures_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / FIGURES


def cases_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CASES


def case_path(run_dir: str | Path, k: int) -> Path:
    return cases_dir(run_dir) / f"case_{k}.npz"


def parts_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PARTS


def part_path(run_dir: str | Path, condition: str, suffix: str = ".parquet") -> Path:
    """``.parts/<condition>.parquet`` (per-sample rows, the commit marker) or ``.seconds``."""
    return parts_dir(run_dir) / f"{condition}{suffix}"


def condition_path(run_dir: str | Path, condition: str, task: str) -> Path:
    """A condition's stored predictions: ``.parquet`` (classification, and the calibration
    split) or ``.npz`` (segmentation / promptable probability maps)."""
    suffix = ".parquet" if task == "classification" else ".npz"
    return predictions_dir(run_dir) / f"{condition}{suffix}"


def condition_file(run_dir: str | Path, condition: str, suffix: str) -> Path:
    """Another file of a condition in ``predictions/``, e.g. ``.confidence.parquet``."""
    return predictions_dir(run_dir) / f"{condition}{suffix}"


def condition_files(run_dir: str | Path, name: str, task: str) -> list[Path]:
    """Every file a condition may write in ``predictions/`` (listed before the condition runs)."""
    suffixes = CONDITION_SUFFIXES["classification" if task == "classification"
                                  else "segmentation"]
    return [condition_file(run_dir, name, s) for s in suffixes]


def split_paths(run_dir: str | Path, split: str = TEST_SPLIT) -> dict[str, Path]:
    """The per-split files of ``predictions/``: ``index`` (parquet), ``ground_truth`` and
    ``instances`` (npz). The test split's names carry no prefix (``index.parquet``,
    ``ground_truth.npz``, ``ground_truth_instances.npz``); another split's are prefixed with its
    name (``shift_data.index.parquet``...)."""
    prefix = "" if split == TEST_SPLIT else f"{split}."
    folder = predictions_dir(run_dir)
    return {"index": folder / f"{prefix}index.parquet",
            "ground_truth": folder / f"{prefix}ground_truth.npz",
            "instances": folder / f"{prefix}ground_truth_instances.npz"}


def prompts_path(run_dir: str | Path) -> Path:
    return predictions_dir(run_dir) / "prompts.parquet"


def embeddings_path(run_dir: str | Path) -> Path:
    """``predictions/embeddings.npz``: the model's penultimate features per test sample
    (``ids``, ``features``, ``layer``: :mod:`medfail.engine.embeddings`)."""
    return predictions_dir(run_dir) / "embeddings.npz"


def metadata_slices_path(run_dir: str | Path) -> Path:
    """``predictions/metadata_slices.parquet``: ``id, slice`` membership of the data's
    metadata.csv columns (``meta.`` slices), stored so ``medfail analyse`` needs no data."""
    return predictions_dir(run_dir) / "metadata_slices.parquet"


def label_map(foreground: np.ndarray) -> np.ndarray:
    """Predicted class per pixel from stored (C - 1, H, W) foreground probabilities (float16 in
    ``predictions/<condition>.npz``): argmax over ``[1 - sum, *foreground]`` in float32, ties to
    the lower class (one class: ``p > 0.5``)."""
    fg = foreground.astype(np.float32)
    full = np.concatenate([1.0 - fg.sum(axis=0, keepdims=True), fg])
    return np.argmax(full, axis=0)


def write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text atomically: a temporary name (``<name>.tmp``, which the manifest's
    ``remove`` and resuming clean up), then rename; never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a parquet file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def per_target_thresholds(thresholds: float | Mapping[str, float] | None,
                          targets: Iterable[str], default: float = 0.5) -> dict[str, float]:
    """Decision thresholds as ``{target: float}``, the one form ``run.json: thresholds`` stores.

    A single number applies to every target (run directories of medfail <= issue 12 stored one
    for single-threshold runs); None gives ``default``. A target a mapping lacks raises KeyError.
    """
    targets = [str(t) for t in targets]
    if thresholds is None:
        return dict.fromkeys(targets, float(default))
    if isinstance(thresholds, Mapping):
        return {t: float(thresholds[t]) for t in targets}
    return dict.fromkeys(targets, float(thresholds))


# ------------------------------------------------------------------------------------ readers
RECOVER = ("re-run the `medfail run` command that made this folder (run.json: command) into "
           "the same --out: finished conditions are reused, damaged ones recomputed")
RECOVER_NO_RUN_JSON = ("re-run the same `medfail run` command into this folder: finished "
                       "conditions are reused, damaged ones recomputed")
#: what every report reads
REQUIRED = (RUN_JSON, METRICS, RANKING, PER_SAMPLE)
#: what ``medfail analyse`` reads at least (besides the predictions of run.json's conditions)
ANALYSE_REQUIRED = (RUN_JSON, PER_SAMPLE, f"{PREDICTIONS}/index.parquet")
#: the run.json entries the report reads
RUN_KEYS = ("task", "command", "seed", "config", "conditions", "model", "data",
            "medfail_version", "packages", "hardware", "wall_clock_s")
CHECKED = (".parquet", ".npz", ".json")


def _damaged(path: Path, problem: str) -> MedfailInputError:
    how = RECOVER_NO_RUN_JSON if path.name == RUN_JSON else RECOVER
    return MedfailInputError(path, f"{problem}; {how}")


def read_table(path: Path) -> pd.DataFrame:
    """``pd.read_parquet`` whose failures name the file and the way to recover."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise _damaged(path, "missing from the run directory") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _damaged(path, f"damaged ({damage(path) or exc})") from None


def read_run_json(path: Path) -> dict[str, Any]:
    """``run.json`` as a dict; a missing, broken or incomplete one names itself."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _damaged(path, "missing from the run directory") from None
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"damaged (not valid JSON: {exc})") from None
    if not isinstance(run, dict):
        raise _damaged(path, "damaged (not a JSON object)")
    missing = [k for k in RUN_KEYS if k not in run]
    if missing:
        raise _damaged(path, f"damaged (no {', '.join(missing)})")
    return run


# ----------------------------------------------------------------------------------- manifest
# Which files of a run directory medfail wrote, and for which configuration.
#
# ``<run_dir>/.medfail/manifest.json`` is the first thing a run writes (temporary name, then
# rename, so it is never half-written). It holds the run's cache identity (model sha256, data
# hash, task, options, device type, medfail version, parts format), its key, and the path of
# every file medfail writes into the folder, relative to it (POSIX separators). A path is listed
# *before* its file is written (figures and case files, whose names are chosen while they are
# drawn, right after), so a crash never leaves a medfail file the manifest does not account for.
#
# Rules (user-facing version: docs/run_directory.md):
#
# * medfail deletes only listed files (and their ``.tmp`` siblings); whatever else is in the
#   folder (``notes.txt``, ``predictions/mine.csv``) belongs to the user and is never touched.
# * a finished condition is trusted only when its ``.parts/`` file is listed and readable.
# * ``--out`` must be new, empty, or a run directory of the same configuration (resumed); a run
#   directory of another configuration, or a non-empty folder medfail did not write, needs
#   ``overwrite`` (then medfail removes its own listed files and reuses the folder).

#: bump when the manifest's layout changes
FORMAT = 1
Snapshot = dict[str, tuple[int, int, int]]


def file_sha256(path: Path) -> str | None:
    """sha256 (hex) of a file's bytes; None when it is not a readable file."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def cache_key(identity: dict[str, Any]) -> str:
    """sha256 of the identity's canonical JSON."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def damage(path: Path) -> str | None:
    """Why a file medfail wrote cannot be read, or None when it looks whole.

    Cheap structural checks only: a parquet file's footer, an ``.npz``'s zip directory, a
    ``.json`` file's text. A truncated file fails them; a flipped byte in the middle may not.
    """
    try:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                pq.read_metadata(path)
            except (pa.ArrowException, ValueError):
                return "not a readable parquet file: truncated or corrupted"
        elif path.suffix == ".npz":
            try:
                with zipfile.ZipFile(path) as zf:
                    zf.infolist()
            except (zipfile.BadZipFile, EOFError, ValueError):
                return "not a readable .npz file: truncated or corrupted"
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                return f"not valid JSON ({exc})"
        elif not path.exists():
            return "missing"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _unlink_file(path: Path) -> None:
    """Delete ``path`` if it is a file (or a link); a folder the user put in its place, or a
    path under a file, is left alone."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if path.is_symlink() or path.is_file():
            path.unlink()


class Manifest:
    """The manifest of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, identity: dict[str, Any], reusable: bool,
                 files: Iterable[str] = (), stages: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.key = cache_key(self.identity)
        self.reusable = reusable
        self.files: set[str] = set(files)
        #: finished stages after the conditions: {name: {key, outputs: {path: sha256}, info}}
        self.stages: dict[str, Any] = dict(stages or {})

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST

    @classmethod
    def read(cls, run_dir: str | Path) -> Manifest | None:
        """The folder's manifest; None when it has none. A damaged one is an error: medfail
        can then no longer tell its own files from the user's."""
        path = Path(run_dir) / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError("'files' is not a list of paths")
            stages = data.get("stages", {})  # absent before stage records existed
            if not isinstance(stages, dict):
                raise ValueError("'stages' is not a mapping")
            manifest = cls(run_dir, data["identity"], bool(data["reusable"]), files, stages)
            if data["key"] != manifest.key:
                raise ValueError("its key does not match its identity")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MedfailInputError(
                path, f"damaged ({exc}): medfail can no longer tell the files it wrote in "
                f"{Path(run_dir)} from yours, so it will not write there; choose a new folder "
                "for --out (or move your own files out and delete that folder)") from None
        return manifest

    def save(self) -> None:
        write_atomic(self.path, json.dumps(
            {"format": FORMAT, "key": self.key, "reusable": self.reusable,
             "identity": self.identity, "files": sorted(self.files), "stages": self.stages},
            indent=1))

    def rel(self, path: str | Path) -> str:
        """``path`` (inside the run directory) relative to it, POSIX separators."""
        rel = Path(os.path.relpath(path, self.run_dir))
        if rel.parts[:1] == ("..",) or rel.is_absolute():
            raise ValueError(f"{path} is outside the run directory {self.run_dir}")
        return rel.as_posix()

    def owns(self, path: str | Path) -> bool:
        return self.rel(path) in self.files

    def claim(self, *paths: str | Path) -> None:
        """List ``paths`` (call before writing them). Entries another handle on the same
        manifest added meanwhile (the report's figures) are kept."""
        new = {self.rel(p) for p in paths} - self.files
        if not new:
            return
        self._merge_disk()
        self.files |= new
        self.save()

    def _merge_disk(self) -> None:
        """Add the files and stages another handle on this manifest saved meanwhile."""
        try:
            on_disk = Manifest.read(self.run_dir)
        except MedfailInputError:
            on_disk = None
        if on_disk is not None and on_disk.key == self.key:
            self.files |= on_disk.files
            self.stages = {**on_disk.stages, **self.stages}

    def cached_stage(self, name: str, key: str) -> dict[str, Any] | None:
        """The ``info`` stage ``name`` recorded under ``key`` when every output it recorded is
        still listed here with the recorded sha256 (else None: the stage is recomputed)."""
        record = self.stages.get(name)
        if not isinstance(record, dict) or record.get("key") != key or not self.reusable:
            return None
        for rel, digest in record.get("outputs", {}).items():
            if rel not in self.files or file_sha256(self.run_dir / rel) != digest:
                return None
        return dict(record.get("info") or {})

    def drop_stage(self, name: str) -> None:
        """Forget stage ``name`` (before it is recomputed: a crash then leaves no record)."""
        self._merge_disk()
        if self.stages.pop(name, None) is not None:
            self.save()

    def record_stage(self, name: str, key: str, outputs: Iterable[str | Path],
                     info: Mapping[str, Any] | None = None) -> None:
        """Record that stage ``name`` finished under ``key``, writing ``outputs`` (files or
        folders of the run directory, hashed now) and returning ``info`` (JSON)."""
        files: dict[str, str | None] = {}
        for out in outputs:
            out = Path(out)
            for p in sorted(out.rglob("*")) if out.is_dir() else [out]:
                if p.is_file():
                    files[self.rel(p)] = file_sha256(p)
        self._merge_disk()
        self.stages[name] = {"key": key, "outputs": files,
                             "info": json.loads(json.dumps(info or {}, default=str))}
        self.save()

    def record_changed(self, before: Snapshot, *names: str) -> None:
        """List the files under ``names`` created or rewritten since ``before``."""
        now = snapshot(self.run_dir, *names)
        self.claim(*(self.run_dir / rel for rel, stat in now.items() if before.get(rel) != stat))

    def remove(self, under: str = "") -> None:
        """Delete the listed files under ``under`` (all when empty) and their ``.tmp``
        siblings, then folders that this left empty; nothing else is ever deleted."""
        prefix = under.rstrip("/") + "/" if under else ""
        gone = {f for f in self.files if not prefix or f.startswith(prefix) or f == under}
        folders: set[Path] = set()
        for rel in sorted(gone):
            path = self.run_dir / rel
            for p in (path, path.with_name(path.name + ".tmp")):
                _unlink_file(p)
            folders.update(p for p in path.parents if self.run_dir in p.parents)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # only when empty: the user's files keep theirs
                folder.rmdir()
        self.files -= gone
        self.save()

    def remove_stale_tmp(self) -> None:
        """Delete ``.tmp`` files a killed run left next to listed files."""
        for rel in self.files:
            path = self.run_dir / rel
            _unlink_file(path.with_name(path.name + ".tmp"))

    def differences(self, identity: dict[str, Any]) -> list[str]:
        """Dotted names of the identity entries that differ, e.g. ``config.n_bootstrap``."""
        other = Manifest(self.run_dir, identity, True).identity
        out: list[str] = []

        def walk(a: Any, b: Any, prefix: str) -> None:
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k), b.get(k), f"{prefix}{k}.")
            elif a != b:
                out.append(prefix.rstrip("."))
        walk(self.identity, other, "")
        return out


def snapshot(run_dir: Path, *names: str) -> Snapshot:
    """(inode, size, mtime) of every file under ``names`` (files or folders of ``run_dir``)."""
    out: Snapshot = {}
    for name in names:
        root = Path(run_dir) / name
        paths = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())
        for p in paths:
            st = p.stat()
            out[p.relative_to(run_dir).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _entries(folder: Path) -> list[str]:
    """The folder's entries, less a ``.medfail/`` without a manifest (a run killed before it
    wrote its first manifest)."""
    names = sorted(p.name for p in folder.iterdir())
    if HOME in names and not (folder / MANIFEST).exists():
        names.remove(HOME)
    return names


def check_out_dir(path: str | Path, overwrite: bool = False) -> Manifest | None:
    """Fail fast (before any model is loaded) unless medfail may write a run into ``path``:
    it must be a folder (or creatable as one), writable, and either empty, a medfail run
    directory (its manifest is returned; the configuration is compared later, by
    :func:`open_run_dir`) or, with ``overwrite``, any folder. Raises MedfailInputError."""
    path = Path(path)
    try:
        exists = path.exists()
        if exists and not path.is_dir():
            raise MedfailInputError(path, "is a file, not a folder: --out needs a folder for "
                                    "the run directory (a new or empty one)")
        if not exists:
            ancestor = next(p for p in (path, *path.parents) if p.exists())
            if not ancestor.is_dir():
                raise MedfailInputError(path, f"cannot create the folder: {ancestor} is a "
                                        "file; choose another --out")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise MedfailInputError(path, f"cannot create the folder: no write permission "
                                        f"in {ancestor}; choose another --out")
            return None
        if not os.access(path, os.W_OK | os.X_OK):
            raise MedfailInputError(path, "folder is not writable; choose another --out "
                                    "(or give yourself write permission)")
        manifest = Manifest.read(path)
        if manifest is not None:
            return manifest
        found = _entries(path)
    except OSError as exc:
        raise MedfailInputError(path, f"cannot use as the run directory "
                                f"({exc.strerror or exc}); choose another --out") from None
    if found and not overwrite:
        older = " (run.json without a manifest: a run directory of an older medfail?)" \
            if RUN_JSON in found else ""
        raise MedfailInputError(
            path, f"folder is not empty and is not a medfail run directory (found "
            f"{listing(found)}){older}; medfail will not write into it. Choose a new or empty "
            "folder for --out, or pass --overwrite to write the run into it anyway (medfail "
            "never deletes files it did not write; files with its names, e.g. report.html or "
            "predictions/clean.parquet, would be replaced)")
    return None


def check_configuration(run_dir: str | Path, identity: dict[str, Any],
                        overwrite: bool = False) -> Manifest | None:
    """:func:`check_out_dir`, and refuse a run directory of another configuration unless
    ``overwrite``. Writes nothing; returns the folder's manifest (None when it has none)."""
    manifest = check_out_dir(run_dir, overwrite)
    if manifest is not None and not overwrite and manifest.key != cache_key(identity):
        raise MedfailInputError(
            run_dir, "is a medfail run directory of another configuration (differs in "
            f"{listing(manifest.differences(identity))}); choose a new folder for --out to "
            "keep it, or pass --overwrite to replace its results (medfail removes only the "
            "files it wrote, listed in .medfail/manifest.json; files you added stay)")
    return manifest


def open_run_dir(run_dir: str | Path, identity: dict[str, Any], reusable: bool,
                 overwrite: bool = False) -> Manifest:
    """Take ``run_dir`` for a run of ``identity``; returns its manifest (written before anything
    else). Same configuration: resumed (finished conditions are reused when ``reusable``, else
    medfail's old files are removed). Another configuration: refused unless ``overwrite``, then
    medfail's listed files are removed and the folder is reused. Files not listed are kept."""
    run_dir = Path(run_dir)
    manifest = check_configuration(run_dir, identity, overwrite)
    fresh = Manifest(run_dir, identity, reusable)
    if manifest is None:  # new, empty, or (with overwrite) a folder medfail did not write
        run_dir.mkdir(parents=True, exist_ok=True)
        fresh.save()
        return fresh
    if manifest.key == fresh.key and manifest.reusable and reusable:
        manifest.remove_stale_tmp()
        return manifest
    manifest.remove()  # a crash here leaves the old key on disk, so this is redone
    fresh.save()
    return fresh


def enclosing_manifest(path: str | Path) -> Manifest | None:
    """The manifest of the run directory that holds ``path`` (``path`` itself or a folder above
    it), so that what medfail writes there (``medfail compare``'s default ``RUN_B/compare``) is
    listed; None outside a run directory or when its manifest is damaged (nothing is listed)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if (folder / MANIFEST).exists():
            try:
                return Manifest.read(folder)
            except MedfailInputError:
                return None
    return None


class ReportOutputs:
    """What rendering a report writes (``figures/``, ``report.html``, ``report.pdf``,
    ``explorer.html``): the old figures medfail listed are removed first, and what the report
    wrote is listed after. A folder without a (readable) manifest is left as is: nothing is
    deleted there."""

    NAMES = (FIGURES, REPORT_HTML, REPORT_PDF, EXPLORER_HTML)

    def __init__(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        try:
            self.manifest = Manifest.read(run_dir)
        except MedfailInputError:
            self.manifest = None
        if self.manifest is not None:
            self.manifest.remove(FIGURES)
            self.manifest.claim(run_dir / REPORT_HTML, run_dir / REPORT_PDF)
        self.before = snapshot(run_dir, *self.NAMES)

    def record(self) -> None:
        if self.manifest is not None:
            self.manifest.record_changed(self.before, *self.NAMES)


def own_folder(path: str | Path, kind: str, entries: Iterable[str]) -> None:
    """Make ``path`` a folder medfail owns for ``kind`` (e.g. the demo's): it must be new,
    empty, already marked ``.medfail/<kind>.json``, or hold only ``entries`` (folders of an
    earlier, unmarked version). The marker is written first. Raises MedfailInputError."""
    path = Path(path)
    marker = path / HOME / f"{kind}.json"
    check_out_dir(path, overwrite=True)  # file / permissions
    if path.is_dir() and not marker.exists():
        found = [n for n in _entries(path) if n != HOME]
        foreign = sorted(set(found) - set(entries))
        if foreign:
            raise MedfailInputError(
                path, f"folder is not empty and is not a medfail {kind} folder (found "
                f"{listing(foreign)}); medfail will not write into it: choose a new or "
                "empty folder for --out")
    path.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        write_atomic(marker, json.dumps({"kind": kind, "entries": sorted(entries)}))


# ------------------------------------------------------------------- checks before reading
def stored_files(run_dir: Path) -> list[Path]:
    """The run directory's files that analyses read: those medfail listed in its manifest
    (less ``.parts/``, internal to ``medfail run``), or, in a folder without a readable
    manifest, the tables, predictions and case files found by name."""
    try:
        manifest = Manifest.read(run_dir)
    except MedfailInputError:
        manifest = None
    if manifest is not None:
        names = [f for f in sorted(manifest.files) if not f.startswith((f"{PARTS}/", f"{HOME}/"))]
        return [run_dir / f for f in names if f.endswith(CHECKED) and (run_dir / f).exists()]
    found = [p for pattern in ("*.parquet", RUN_JSON, f"{PREDICTIONS}/*.parquet",
                               f"{PREDICTIONS}/*.npz", f"{CASES}/*.npz", CASES_JSON)
             for p in sorted(run_dir.glob(pattern))]
    return list(dict.fromkeys(found))


def check_run_dir(run_dir: str | Path, required: Iterable[str] = REQUIRED,
                  rebuilt: Iterable[str] = ()) -> None:
    """Raise MedfailInputError naming the first missing or damaged file of ``run_dir``.

    ``required``: the files that must exist (default: what every report reads); ``rebuilt``:
    files about to be rewritten (``medfail analyse``'s tables), neither required nor checked."""
    run_dir = Path(run_dir)
    skip = {run_dir / name for name in rebuilt}
    for name in required:
        if not (run_dir / name).is_file():
            raise _damaged(run_dir / name, "missing from the run directory")
    read_run_json(run_dir / RUN_JSON)
    for path in stored_files(run_dir):
        if path in skip:
            continue
        problem = damage(path)
        if problem is not None:
            raise _damaged(path, f"damaged ({problem})")
