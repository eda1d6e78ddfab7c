"""Read a run directory's tables once, for the analyses that sit on top of them.

A damaged or missing file is a :class:`~medfail.errors.MedfailInputError` naming it and saying
how to recover (re-run ``medfail run`` into the folder: finished conditions are reused, damaged
ones recomputed), never a pyarrow or JSON traceback. :meth:`RunTables.check` looks at every
file up front (cheap structural checks: parquet footers, ``.npz`` directories, JSON text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from medfail.analysis.aggregate import ALL
from medfail.analysis.ranking import PRIMARY_METRIC, primary_target
from medfail.engine.manifest import HOME, Manifest, damage
from medfail.errors import MedfailInputError

RECOVER = ("re-run the `medfail run` command that made this folder (run.json: command) into "
           "the same --out: finished conditions are reused, damaged ones recomputed")
RECOVER_NO_RUN_JSON = ("re-run the same `medfail run` command into this folder: finished "
                       "conditions are reused, damaged ones recomputed")
#: what every report reads
REQUIRED = ("run.json", "metrics.parquet", "ranking.parquet", "per_sample.parquet")
#: the run.json entries the report reads
RUN_KEYS = ("task", "command", "seed", "config", "conditions", "model", "data",
            "medfail_version", "packages", "hardware", "wall_clock_s")
CHECKED = (".parquet", ".npz", ".json")


def _damaged(path: Path, problem: str) -> MedfailInputError:
    how = RECOVER_NO_RUN_JSON if path.name == "run.json" else RECOVER
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


def stored_files(run_dir: Path) -> list[Path]:
    """The run directory's files that analyses read: those medfail listed in its manifest
    (less ``.parts/``, internal to ``medfail run``), or, in a folder without a readable
    manifest, the tables, predictions and case files found by name."""
    try:
        manifest = Manifest.read(run_dir)
    except MedfailInputError:
        manifest = None
    if manifest is not None:
        names = [f for f in sorted(manifest.files) if not f.startswith((".parts/", f"{HOME}/"))]
        return [run_dir / f for f in names if f.endswith(CHECKED) and (run_dir / f).exists()]
    found = [p for pattern in ("*.parquet", "run.json", "predictions/*.parquet",
                               "predictions/*.npz", "cases/*.npz", "cases/cases.json")
             for p in sorted(run_dir.glob(pattern))]
    return list(dict.fromkeys(found))


def check_run_dir(run_dir: str | Path) -> None:
    """Raise MedfailInputError naming the first missing or damaged file of ``run_dir``."""
    run_dir = Path(run_dir)
    for name in REQUIRED:
        if not (run_dir / name).is_file():
            raise _damaged(run_dir / name, "missing from the run directory")
    read_run_json(run_dir / "run.json")
    for path in stored_files(run_dir):
        problem = damage(path)
        if problem is not None:
            raise _damaged(path, f"damaged ({problem})")


def _optional(path: Path) -> pd.DataFrame | None:
    return read_table(path) if path.exists() else None


@dataclass
class RunTables:
    """The run directory's results (``run.json`` and the parquet tables), read lazily."""

    run_dir: Path

    def check(self) -> None:
        """Fail with one message naming the first missing or damaged file (see
        :func:`check_run_dir`)."""
        check_run_dir(self.run_dir)

    @cached_property
    def run(self) -> dict[str, Any]:
        return read_run_json(self.run_dir / "run.json")

    @property
    def task(self) -> str:
        return str(self.run["task"])

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[self.task]

    @cached_property
    def target(self) -> str:
        return primary_target(self.metrics, self.primary)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return read_table(self.run_dir / "metrics.parquet")

    @cached_property
    def ranking(self) -> pd.DataFrame:
        return read_table(self.run_dir / "ranking.parquet")

    @cached_property
    def per_sample(self) -> pd.DataFrame:
        return read_table(self.run_dir / "per_sample.parquet")

    @cached_property
    def calibration(self) -> pd.DataFrame | None:
        return _optional(self.run_dir / "calibration.parquet")

    @cached_property
    def calibration_target(self) -> str:
        """The primary target when the calibration table has it, else its first target."""
        cal = self.calibration
        if cal is None or self.target in set(cal["target"]):
            return self.target
        return str(cal["target"].iloc[0])

    @cached_property
    def mitigations(self) -> pd.DataFrame | None:
        return _optional(self.run_dir / "mitigations.parquet")

    @cached_property
    def evidence(self) -> pd.DataFrame | None:
        return _optional(self.run_dir / "evidence.parquet")

    @cached_property
    def index(self) -> pd.DataFrame:
        return read_table(self.run_dir / "predictions" / "index.parquet")

    def predictions(self, condition: str) -> pd.DataFrame:
        """Classification predictions of one condition (``calibration`` = the calibration split)."""
        return read_table(self.run_dir / "predictions" / f"{condition}.parquet")

    def confidence(self, condition: str) -> pd.DataFrame:
        """Segmentation per-image confidence signals of one condition."""
        return read_table(self.run_dir / "predictions" / f"{condition}.confidence.parquet")

    def metric(self, metric: str, condition: str = "clean", slice_: str = ALL,
               target: str | None = None) -> pd.Series | None:
        """One row of ``metrics.parquet`` (None when absent)."""
        m = self.metrics
        rows = m[(m["metric"] == metric) & (m["condition"] == condition) & (m["slice"] == slice_)
                 & (m["target"] == (target or self.target))]
        return None if rows.empty else rows.iloc[0]

    @cached_property
    def breaking(self) -> pd.DataFrame:
        """Stress conditions whose effect on the primary metric is significant, worst first."""
        r = self.ranking
        return r[(r["kind"] == "condition") & r["significant"]]

    @cached_property
    def breaking_slices(self) -> pd.DataFrame:
        r = self.ranking
        return r[(r["kind"] == "slice") & r["significant"]]
