"""The deployment checklist: data assumptions, monitors, safe use, known failures, pass/fail.

Every line comes from a measured number of the run:

* **input monitors** — for each test that breaks the model (lowest significant severity), the
  input-quality feature that best flags its images, with a threshold at the clean 1st/99th
  percentile and its measured detection and false-alarm rates
  (:func:`medfail.analysis.input_quality.best_monitor`; in-sample on the test images);
* **confidence drift** — alarm when the mean confidence of a window of ``WINDOW`` cases falls under
  clean mean − 3·sd/√WINDOW; each breaking condition is checked against it;
* **deferral** — refer the 20 % least confident cases: the confidence threshold (clean 20th
  percentile) with the measured risk of the kept cases;
* **checks** — the suite config's ``checks`` (Deepchecks-style conditions, e.g. "Dice drop under
  0.05 at severity 2"), evaluated on every test's point estimate; ``uncertain`` when the 95 % CI
  straddles the limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import ALL, LOWER_IS_BETTER
from medfail.analysis.calibration import DEFERRED
from medfail.analysis.discovery import finding_text, unnamed
from medfail.analysis.input_quality import best_monitor
from medfail.analysis.run_tables import RunTables

WINDOW = 50
DEFER = DEFERRED


@dataclass(frozen=True)
class CheckSpec:
    """Pass when ``metric`` drops by at most ``max_drop`` at ``severity`` under every test."""

    metric: str
    max_drop: float
    severity: int = 2

    def describe(self) -> str:
        return f"{self.metric} drop ≤ {self.max_drop:g} at severity {self.severity}"


def default_checks(primary: str) -> list[CheckSpec]:
    return [CheckSpec(primary, 0.05, 2)]


def check_specs(t: RunTables, checks: Sequence[Mapping[str, Any]] | None = None
                ) -> list[CheckSpec]:
    """``checks`` when given, else the run's config's ``checks``, else the default check."""
    given = list(checks) if checks is not None else list(t.run["config"].get("checks") or [])
    return [CheckSpec(**c) for c in given] or default_checks(t.primary)


def evaluate_checks(t: RunTables, checks: list[CheckSpec]) -> list[dict[str, Any]]:
    """One row per check × test: drop (harmful direction positive), its CI and the verdict."""
    m = t.metrics
    rows = []
    for check in checks:
        sel = m[(m["metric"] == check.metric) & (m["slice"] == ALL) & (m["target"] == t.target)
                & (m["severity"] == check.severity)
                & m["family"].isin(["corruption", "domain_shift", "prompt"])]
        sign = 1.0 if check.metric in LOWER_IS_BETTER else -1.0
        for r in sel.itertuples():
            drop = sign * r.delta_vs_clean
            lo, hi = sorted((sign * r.delta_ci_low, sign * r.delta_ci_high))
            verdict = "pass" if drop <= check.max_drop else "fail"
            rows.append({"check": check.describe(), "condition": r.condition, "drop": drop,
                         "ci_low": lo, "ci_high": hi, "verdict": verdict,
                         "uncertain": bool(lo <= check.max_drop <= hi)})
    return rows


def _confidences(t: RunTables, condition: str) -> np.ndarray:
    if t.task == "classification":
        p = t.predictions(condition)["prob"].to_numpy(float)
        return np.maximum(p, 1 - p)
    c = t.confidence(condition)
    c = c[c["signal"] == "mask_confidence"]
    own = c[c["target"] == t.target]
    if own.empty:  # the primary target is the macro average: mean over the classes per image
        return c.groupby("id", sort=False)["value"].mean().to_numpy()
    return own["value"].to_numpy()


def _lowest_breaking(t: RunTables) -> pd.DataFrame:
    """Per breaking test, its lowest significant severity (a monitor must catch that one)."""
    b = t.breaking[t.breaking["name"] != "shift_data"]
    return b.sort_values(["test", "severity"]).groupby("test", sort=False).head(1) \
        .sort_values("effect")


def _spacing_text(present: bool, task: str) -> str:
    """What the spacing means for this run's metrics (units per metric: docs/metrics.md)."""
    if task == "classification":
        return "present on every image" if present else "missing (no classification metric " \
            "needs it)"
    return "present on every image: NSD and HD95 in mm (boundary F1 stays in px)" if present \
        else "missing: NSD and HD95 in px"


def _data_assumptions(t: RunTables) -> list[tuple[str, str]]:
    idx, run = t.index, t.run
    volumes = "depth" in idx and bool(idx["depth"].notna().any())
    axes = ("height", "width", "depth") if volumes else ("height", "width")
    size = " × ".join(f"{int(idx[a].min())}–{int(idx[a].max())}" for a in axes)
    kind = "volumes" if volumes else "images"
    items = [("modality", str(run.get("modality") or "unknown")),
             ("images seen", f"{run['data']['n_samples']} test {kind}"),
             ("volume size (voxels)" if volumes else "image size (px)", size),
             ("voxel spacing" if volumes else "pixel spacing",
              _spacing_text(bool(idx["spacing"].notna().all()), t.task))]
    ev = t.evidence
    if ev is not None and (ev["feature"] == "intensity_p1").any():
        lo = ev.loc[ev["feature"] == "intensity_p1", "value"].quantile(0.01)
        hi = ev.loc[ev["feature"] == "intensity_p99", "value"].quantile(0.99)
        items.append(("intensity range (1st–99th pct.)", f"{lo:.4g} to {hi:.4g}"))
    slices = pd.read_parquet(rundir.table(t.run_dir, rundir.SLICES))
    for key in ("site", "protocol", "scanner", "vendor"):
        vals = sorted({s.split("=", 1)[1] for s in slices["slice"]
                       if s.startswith(f"meta.{key}=")})
        if vals:
            items.append((f"{key}s seen", ", ".join(vals)))
    if run["data"].get("shift"):
        items.append(("second site tested", run["data"]["shift"]["name"]))
    log = run["model"].get("training_log") or {}
    if log.get("n_train"):
        items.append(("training images", str(log["n_train"])))
    return items


def _monitors(t: RunTables) -> list[dict[str, str]]:
    ev = t.evidence
    rows = []
    for r in _lowest_breaking(t).itertuples():
        mon = best_monitor(ev, r.name) if ev is not None and r.family != "prompt" else None
        rows.append({"condition": r.name,
                     "effect": f"{r.metric} {r.effect:+.3f} [{r.effect_ci_low:.3f}, "
                               f"{r.effect_ci_high:.3f}]",
                     "monitor": mon.describe() if mon else
                     ("prompt QA: check the prompt against the image" if r.family == "prompt"
                      else "no input feature available")})
    if t.run["data"].get("shift") and ev is not None:
        mon = best_monitor(ev, "shift_data")
        if mon is not None:
            rows.append({"condition": "shift_data", "effect": "second site",
                         "monitor": mon.describe()})
    return rows


def _confidence_drift(t: RunTables) -> dict[str, Any]:
    clean = _confidences(t, "clean")
    mean = float(clean.mean()) if len(clean) else float("nan")
    sd = float(clean.std(ddof=1)) if len(clean) > 1 else float("nan")
    limit = mean - 3 * sd / np.sqrt(WINDOW)
    rows = []
    for r in _lowest_breaking(t).itertuples():
        c = float(_confidences(t, r.name).mean())
        rows.append({"condition": r.name, "mean_confidence": c, "fires": c < limit})
    return {"clean_mean": mean, "limit": limit, "window": WINDOW, "rows": rows}


def deferral_threshold(t: RunTables) -> float:
    """Confidence under which a case is referred: the clean 20th percentile (NaN with no
    clean confidence)."""
    clean = _confidences(t, "clean")
    return float(np.quantile(clean, DEFER)) if len(clean) else float("nan")


def _deferral(t: RunTables) -> str:
    cal = t.calibration
    if cal is None:
        return "no calibration table: deferral not measured"
    thr = deferral_threshold(t)
    method = "max_prob" if t.task == "classification" else "mask_confidence"
    target = t.calibration_target
    v = cal[(cal["condition"] == "clean") & (cal["method"] == method)
            & (cal["target"] == target)].set_index("metric")["value"]
    if t.task == "classification":
        return (f"refer cases whose confidence max(p, 1−p) < {thr:.3f} ({DEFER:.0%} of clean "
                "cases): "
                f"error rate of the kept cases {v.get('risk_at_80', np.nan):.3f}; the largest "
                f"coverage with error rate ≤ 5% is {v.get('coverage_at_risk_5', np.nan):.0%}")
    return (f"refer images whose mask confidence < {thr:.3f} ({DEFER:.0%} of clean images): "
            f"mean Dice of the kept images {v.get('dice_at_80', np.nan):.3f} (all: "
            f"{v.get('dice_all', np.nan):.3f}); the largest coverage with mean 1 − Dice ≤ 0.10 "
            f"is {v.get('coverage_at_risk_10', np.nan):.0%}")


def build_checklist(t: RunTables) -> dict[str, Any]:
    """The checklist's sections (see the module docstring)."""
    specs = check_specs(t)
    slices = [f"{r.name}: {r.metric} {r.value:.3f} vs {r.reference:.3f} overall "
              f"(gap {r.effect:+.3f} [{r.effect_ci_low:.3f}, {r.effect_ci_high:.3f}], n = {r.n})"
              for r in t.breaking_slices.itertuples()]
    slices += [f"discovered (confirmed on held-out data): {finding_text(r, t.task)}"
               for _, r in t.confirmed_slices.iterrows() if unnamed(str(r["slice"]))]
    return {"data": _data_assumptions(t), "monitors": _monitors(t),
            "drift": _confidence_drift(t), "deferral": _deferral(t),
            "deferral_threshold": deferral_threshold(t),
            "slices": slices, "checks": evaluate_checks(t, specs)}
