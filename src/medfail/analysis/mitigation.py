"""Mitigations measured on the top breaking condition (and worst slice), with their cost.

``mitigations.parquet`` columns: ``mitigation, base, slice, target, metric, before, after,
effect, ci_low, ci_high, helps, time_ratio, forward_passes, coverage, note``.

* ``tta`` (all tasks) and ``morphology`` post-processing (segmentation; parameters chosen on the
  calibration split) are stored conditions ``<method>|<base>`` on the same images as ``base``:
  ``effect = after - before`` with a PAIRED bootstrap interval (same resamples); ``helps`` = the
  interval lies above 0 (below for lower-is-better metrics). ``tta`` on clean is listed too.
* ``temperature`` (classification): ECE and NLL before/after scaling under the base condition
  (no interval: a single fitted transform; ``helps`` = it lowers them).
* ``selective_80``: keep the 80 % most confident cases and defer the rest to a reader: the metric
  on kept cases vs all (``coverage`` = 0.8 is the cost). The kept cases are the 80 % most
  confident of ALL cases, chosen without the label (``sens_at_80`` / ``dice_at_80`` of
  ``calibration.parquet``): classification reports the sensitivity among the kept positives.

Cost: ``time_ratio`` = wall-clock of the mitigation condition ÷ that of its base condition;
``forward_passes`` per image (TTA 4, MC dropout ``mc_passes``, post-processing 0 extra).
A mitigation that does not help is reported as such (``helps = False``), never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medfail.analysis.aggregate import ALL, Estimate, Key, beneficial
from medfail.analysis.calibration import COVERAGE, DEFERRED
from medfail.analysis.ranking import PRIMARY_METRIC, primary_target
from medfail.metrics.bootstrap import percentile_ci
from medfail.uncertainty.sampling import TTA_FLIPS

MIT_COLUMNS = ["mitigation", "base", "slice", "target", "metric", "before", "after", "effect",
               "ci_low", "ci_high", "helps", "time_ratio", "forward_passes", "coverage", "note"]
SECOND_METRIC = {"classification": "f1", "segmentation": "lesion_f1", "promptable": "lesion_f1"}
PASSES = {"tta": len(TTA_FLIPS), "morphology": 1}


def mitigation_table(task: str, conditions: Sequence[Any], draws: dict[Key, Estimate],
                     calibration: pd.DataFrame, ranking: pd.DataFrame,
                     seconds: dict[str, float], config: Any) -> pd.DataFrame:
    """Before/after rows for every stored mitigation condition and the post-hoc mitigations."""
    metrics = [PRIMARY_METRIC[task], SECOND_METRIC[task]]
    keys = pd.DataFrame(list(draws), columns=["condition", "slice", "target", "metric"])
    target = primary_target(keys, metrics[0]) if len(keys) else ""
    worst_slices = [r.name for r in ranking.itertuples()
                    if r.kind == "slice" and r.significant and not r.small_slice][:1]
    rows: list[dict[str, Any]] = []
    for cond in conditions:
        if cond.base is None or cond.family not in ("mitigation", "uncertainty"):
            continue
        if cond.method != "tta" and cond.family == "uncertainty":
            continue
        base = cond.base.name
        for sl in [ALL, *worst_slices]:
            for metric in metrics:
                before = draws.get((base, sl, target, metric))
                after = draws.get((cond.name, sl, target, metric))
                if before is None or after is None:
                    continue
                lo, hi = percentile_ci(after.draws - before.draws)
                passes = PASSES.get(cond.method, config.mc_passes)
                rows.append({
                    "mitigation": cond.method, "base": base, "slice": sl, "target": target,
                    "metric": metric, "before": before.value, "after": after.value,
                    "effect": after.value - before.value, "ci_low": lo, "ci_high": hi,
                    "helps": beneficial(metric, lo, hi),
                    "time_ratio": seconds.get(cond.name, np.nan) / seconds[base]
                    if seconds.get(base) else np.nan,
                    "forward_passes": 0 if cond.method == "morphology" else passes,
                    "coverage": 1.0,
                    "note": "paired bootstrap vs base" if cond.method != "morphology" else
                    "post-processing chosen on the calibration split; paired bootstrap"})
    bases = {c.base.name for c in conditions if c.family == "mitigation" and c.base is not None}
    rows += _posthoc_rows(task, calibration, sorted(bases), target)
    return pd.DataFrame(rows, columns=MIT_COLUMNS)


def _posthoc_rows(task: str, calibration: pd.DataFrame, bases: list[str],
                  target: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if calibration.empty:
        return rows
    cal_target = "macro" if "macro" in set(calibration["target"]) else (
        target if target in set(calibration["target"]) else str(calibration["target"].iloc[0]))
    for base in bases:
        sub = calibration[(calibration["condition"] == base)
                          & (calibration["target"] == cal_target)]

        def value(method: str, metric: str, frame: pd.DataFrame = sub) -> float:
            v = frame[(frame["method"] == method) & (frame["metric"] == metric)]["value"]
            return float(v.iloc[0]) if len(v) else float("nan")

        common = {"base": base, "slice": ALL, "target": cal_target, "ci_low": np.nan,
                  "ci_high": np.nan}
        if task == "classification" and (sub["method"] == "temperature").any():
            for metric in ("ece", "nll"):
                b, a = value("max_prob", metric), value("temperature", metric)
                rows.append({**common, "mitigation": "temperature", "metric": metric,
                             "before": b, "after": a, "effect": a - b, "helps": bool(a < b),
                             "time_ratio": 0.0, "forward_passes": 0, "coverage": 1.0,
                             "note": "temperature fitted on the calibration split; no CI"})
        method, m_all, m_kept, metric = (
            ("max_prob", "sens_all", "sens_at_80", "sensitivity")
            if task == "classification" else
            ("mask_confidence", "dice_all", "dice_at_80", "dice"))
        b, a = value(method, m_all), value(method, m_kept)
        if np.isfinite(b) and np.isfinite(a):
            rows.append({**common, "mitigation": "selective_80", "metric": metric, "before": b,
                         "after": a, "effect": a - b, "helps": bool(a > b), "time_ratio": 0.0,
                         "forward_passes": 0, "coverage": COVERAGE,
                         "note": f"defer the {DEFERRED:.0%} least confident of all cases "
                                 f"({method}, "
                                 "label-free) to a reader"})
    return rows
