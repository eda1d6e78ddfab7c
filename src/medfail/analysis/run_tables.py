"""Read a run directory's tables once, for the analyses that sit on top of them.

A damaged or missing file is a :class:`~medfail.errors.MedfailInputError` naming it and saying
how to recover (re-run ``medfail run`` into the folder: finished conditions are reused, damaged
ones recomputed), never a pyarrow or JSON traceback. :meth:`RunTables.check` looks at every
file up front (cheap structural checks: parquet footers, ``.npz`` directories, JSON text).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import ALL
from medfail.analysis.ranking import PRIMARY_METRIC, primary_target
from medfail.rundir import (  # noqa: F401  (re-exported: the readers live in medfail.rundir)
    CHECKED,
    RECOVER,
    RECOVER_NO_RUN_JSON,
    REQUIRED,
    RUN_KEYS,
    check_run_dir,
    read_run_json,
    read_table,
    stored_files,
)


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
        return read_run_json(rundir.table(self.run_dir, rundir.RUN_JSON))

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
        return read_table(rundir.table(self.run_dir, rundir.METRICS))

    @cached_property
    def ranking(self) -> pd.DataFrame:
        return read_table(rundir.table(self.run_dir, rundir.RANKING))

    @cached_property
    def per_sample(self) -> pd.DataFrame:
        return read_table(rundir.table(self.run_dir, rundir.PER_SAMPLE))

    @cached_property
    def calibration(self) -> pd.DataFrame | None:
        return _optional(rundir.table(self.run_dir, rundir.CALIBRATION))

    @cached_property
    def calibration_target(self) -> str:
        """The primary target when the calibration table has it, else its first target."""
        cal = self.calibration
        if cal is None or self.target in set(cal["target"]):
            return self.target
        return str(cal["target"].iloc[0])

    @cached_property
    def mitigations(self) -> pd.DataFrame | None:
        return _optional(rundir.table(self.run_dir, rundir.MITIGATIONS))

    @cached_property
    def evidence(self) -> pd.DataFrame | None:
        return _optional(rundir.table(self.run_dir, rundir.EVIDENCE))

    @cached_property
    def discovery(self) -> pd.DataFrame | None:
        """``discovery.parquet`` (None for run directories made before slice discovery)."""
        return _optional(rundir.table(self.run_dir, rundir.DISCOVERY))

    @cached_property
    def discovery_features(self) -> pd.DataFrame | None:
        return _optional(rundir.table(self.run_dir, rundir.DISCOVERY_FEATURES))

    @cached_property
    def label_issues(self) -> pd.DataFrame | None:
        return _optional(rundir.table(self.run_dir, rundir.LABEL_ISSUES))

    @cached_property
    def confirmed_slices(self) -> pd.DataFrame:
        """The discovered slices confirmed on the held-out half, largest confirmed gap first."""
        d = self.discovery
        if d is None or d.empty:
            return pd.DataFrame(columns=[] if d is None else d.columns)
        return d[d["confirmed"].astype(bool)].sort_values("gap", ascending=False)

    @cached_property
    def index(self) -> pd.DataFrame:
        return read_table(rundir.split_paths(self.run_dir)["index"])

    def predictions(self, condition: str) -> pd.DataFrame:
        """Classification predictions of one condition (``calibration`` = the calibration split)."""
        return read_table(rundir.condition_path(self.run_dir, condition, "classification"))

    def confidence(self, condition: str) -> pd.DataFrame:
        """Segmentation per-image confidence signals of one condition."""
        return read_table(rundir.condition_file(self.run_dir, condition, ".confidence.parquet"))

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
