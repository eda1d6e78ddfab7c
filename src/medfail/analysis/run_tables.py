"""Read a run directory's tables once, for the analyses that sit on top of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from medfail.analysis.aggregate import ALL
from medfail.analysis.ranking import PRIMARY_METRIC, primary_target


def _optional(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


@dataclass
class RunTables:
    """The run directory's results (``run.json`` and the parquet tables), read lazily."""

    run_dir: Path

    @cached_property
    def run(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "run.json").read_text())

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
        return pd.read_parquet(self.run_dir / "metrics.parquet")

    @cached_property
    def ranking(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / "ranking.parquet")

    @cached_property
    def per_sample(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / "per_sample.parquet")

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
        return pd.read_parquet(self.run_dir / "predictions" / "index.parquet")

    def predictions(self, condition: str) -> pd.DataFrame:
        """Classification predictions of one condition (``calibration`` = the calibration split)."""
        return pd.read_parquet(self.run_dir / "predictions" / f"{condition}.parquet")

    def confidence(self, condition: str) -> pd.DataFrame:
        """Segmentation per-image confidence signals of one condition."""
        return pd.read_parquet(self.run_dir / "predictions" / f"{condition}.confidence.parquet")

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
