"""Aggregate per-sample results into the tidy ``metrics.parquet`` table.

Columns: ``condition, test, family, severity, slice, target, metric, value, sd, ci_low,
ci_high, delta_vs_clean, delta_ci_low, delta_ci_high, gap_vs_all, gap_ci_low, gap_ci_high, n,
small_slice``.

* Per-image metrics (segmentation ``dice``, ``jaccard``, ``boundary_f1``, ``nsd``, ``hd95``) are
  means over images (``sd`` = their standard deviation, ddof = 1); NaN values are ignored and
  ``n`` counts the finite ones.
* Lesion metrics are pooled over images: ``lesion_sensitivity = ΣTP / (ΣTP + ΣFN)``,
  ``lesion_precision = ΣTP / (ΣTP + ΣFP)``, ``lesion_f1 = 2ΣTP / (2ΣTP + ΣFN + ΣFP)``, so one
  large lesion cannot dominate and missed small lesions count one each. Values and draws are
  those of ``metrics.detection.pooled_lesion_*``: F1 = 1.0 with no lesion and no predicted
  component (as ``pooled_lesion_f1``), sensitivity NaN without lesions, precision NaN without
  predicted components.
* Classification metrics are set-level per target; ``target = "macro"`` is the unweighted mean
  over targets with a defined value. A target with one class (AUROC, AUPRC, sens@95spec
  undefined) keeps its rows with ``value = NaN`` and its ``n``; :func:`macro_coverage` says which
  targets a macro value leaves out, :func:`undefined_targets` which targets have one class in
  the test (``clean``) and second-site (``shift_data``) predictions (``run.json``'s
  ``undefined_targets``; ``medfail run`` prints one warning line for them).
* 95 % percentile bootstrap intervals use ONE resample index matrix over the samples (seeded by
  the run seed) for every condition, slice, target and metric, so Δ-vs-clean intervals and
  slice-vs-all gap intervals are paired. Classification slices are resampled within the slice
  (own seeded matrix) because set-level metrics need the slice's own class balance; their gap
  interval combines the two resamplings (unpaired, conservative).
* ``small_slice`` flags slices with fewer than ``min_slice_n`` samples: kept, never hidden.
* A resample is undefined for a slice's metric when the metric is NaN on it (one class; no
  lesion; no member image of the slice drawn). Undefined resamples are never dropped: they
  count at the least favourable end of each bound, and when more than
  ``metrics.bootstrap.max_undefined`` (24 of 1000) of them would reach a bound the interval
  is NaN (``metrics.bootstrap.percentile_ci``; a table's intervals are computed at once by
  ``percentile_cis``, same values); a Δ or gap resample is undefined when either side is.
  Per resample the macro averages the targets defined in that resample. On tiny or
  skewed samples a percentile interval can exclude its own estimate: it is stored as
  computed (the report marks it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medfail import rundir
from medfail.metrics.bootstrap import (
    auprc_bootstrap,
    auroc_bootstrap,
    bootstrap_indices,
    percentile_cis,
    sens_at_spec_bootstrap,
)
from medfail.metrics.classification import auprc, auroc, sens_at_95spec
from medfail.metrics.classification import f1 as f1_score
from medfail.metrics.detection import (
    pooled_lesion_f1,
    pooled_lesion_precision,
    pooled_lesion_scores,
    pooled_lesion_sensitivity,
)
from medfail.seeding import derive_seed

COLUMNS: list[str] = [
    "condition", "test", "family", "severity", "slice", "target", "metric", "value", "sd",
    "ci_low", "ci_high", "delta_vs_clean", "delta_ci_low", "delta_ci_high", "gap_vs_all",
    "gap_ci_low", "gap_ci_high", "n", "small_slice",
]
MACRO = "macro"
ALL = "all"
LESION_COUNTS = ("lesion_tp", "lesion_fn", "lesion_fp")
LOWER_IS_BETTER = frozenset({"hd95", "brier", "ece", "nll", "aurc", "eaurc"})


def harmful_side(metric: str, lo: object, hi: object) -> np.ndarray:
    """Elementwise :func:`harmful` of arrays of interval ends (NaN ends -> False)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(lo) > 0 if metric in LOWER_IS_BETTER else np.asarray(hi) < 0


def harmful(metric: str, lo: float, hi: float) -> bool:
    """The 95 % CI [lo, hi] of a Δ lies entirely on the harmful side of 0 for ``metric``."""
    return bool(harmful_side(metric, lo, hi))


def beneficial(metric: str, lo: float, hi: float) -> bool:
    """The 95 % CI [lo, hi] of a Δ lies entirely on the helpful side of 0 for ``metric``."""
    return bool(hi < 0) if metric in LOWER_IS_BETTER else bool(lo > 0)


@dataclass
class Estimate:
    """A point value with its bootstrap draws (aligned resamples across estimates)."""

    value: float
    draws: np.ndarray
    n: int
    sd: float = float("nan")


Key = tuple[str, str, str, str]  # condition, slice, target, metric


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicity of each sample in each resample."""
    b = indices.shape[0]
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def mean_estimate(values: np.ndarray, member: np.ndarray, counts: np.ndarray) -> Estimate:
    """Mean of finite member values, with resampled means from the (B, n) counts matrix:
    the counts form of :func:`medfail.metrics.bootstrap.resampled_mean` (equal to it, up to
    float rounding of the sums, on the member values with the same index matrix)."""
    ok = member & np.isfinite(values)
    v = np.where(ok, values, 0.0)
    value = float(v.sum() / ok.sum()) if ok.any() else float("nan")
    draws = _ratio(counts @ v, counts @ ok.astype(float))
    sd = float(np.std(values[ok], ddof=1)) if ok.sum() > 1 else float("nan")
    return Estimate(value, draws, int(ok.sum()), sd)


def pooled_lesion_estimates(tp: np.ndarray, fn: np.ndarray, fp: np.ndarray, member: np.ndarray,
                            counts: np.ndarray) -> dict[str, Estimate]:
    """Pooled lesion sensitivity / precision / F1 over member images.

    Values and draws come from :func:`medfail.metrics.detection.pooled_lesion_f1` (and its
    siblings) on the summed counts: F1 = 1.0 when the slice has no lesion and no predicted
    component, sensitivity / precision NaN when undefined. A resample that draws no member
    image is undefined (NaN) for all three, as for mean metrics."""
    m = member.astype(bool)
    per_image = np.stack([tp, fn, fp], axis=1)[m]
    value = {"lesion_sensitivity": pooled_lesion_sensitivity(per_image),
             "lesion_precision": pooled_lesion_precision(per_image),
             "lesion_f1": pooled_lesion_f1(per_image)}
    sums = np.stack([counts @ (x * m) for x in (tp, fn, fp)], axis=1)
    drawn = counts @ m.astype(float)
    scores = pooled_lesion_scores(np.rint(sums).astype(np.int64))
    n = int(m.sum())
    return {metric: Estimate(value[metric], np.where(drawn > 0, draws, np.nan), n)
            for metric, draws in zip(value, scores, strict=True)}


def _f1_draws(y: np.ndarray, decision: np.ndarray, counts: np.ndarray) -> np.ndarray:
    tp = counts @ (y * decision)
    fp = counts @ ((1 - y) * decision)
    fn = counts @ (y * (1 - decision))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _nan_safe(fn: Callable[..., float]) -> Callable[..., float]:
    def wrapped(*args: np.ndarray) -> float:
        try:
            return fn(*args)
        except ValueError:
            return float("nan")
    return wrapped


def classification_estimates(y: np.ndarray, p: np.ndarray, decision: np.ndarray,
                             idx: np.ndarray) -> dict[str, Estimate]:
    """Point value and resample draws of each classification metric for one target."""
    counts = resample_counts(idx, len(y))
    n = len(y)
    with np.errstate(all="ignore"):
        out = {"auroc": Estimate(_nan_safe(auroc)(y, p), auroc_bootstrap(y, p, idx), n),
               "auprc": Estimate(_nan_safe(auprc)(y, p), auprc_bootstrap(y, p, idx), n),
               "sens_at_95spec": Estimate(_nan_safe(sens_at_95spec)(y, p),
                                          sens_at_spec_bootstrap(y, p, idx, 0.95), n)}
        out["f1"] = Estimate(_nan_safe(f1_score)(y, decision), _f1_draws(y, decision, counts), n)
    return out


def macro_estimate(estimates: Iterable[Estimate]) -> Estimate:
    """Unweighted mean over targets of defined values (per resample likewise)."""
    ests = list(estimates)
    vals = np.array([e.value for e in ests])
    draws = np.stack([e.draws for e in ests])
    finite = np.isfinite(draws)
    mean_draws = _ratio(np.where(finite, draws, 0).sum(0), finite.sum(0))
    value = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return Estimate(value, mean_draws, max(e.n for e in ests))


def _row(cond: pd.Series | object, slice_name: str, target: str, metric: str, est: Estimate,
         clean: Estimate | None, whole: Estimate | None, min_slice_n: int,
         ci: tuple[float, float], delta_ci: tuple[float, float] | None,
         gap_ci: tuple[float, float] | None) -> dict[str, object]:
    """One metrics.parquet row; the intervals come precomputed from :func:`_intervals`."""
    row: dict[str, object] = {
        "condition": cond.condition, "test": cond.test, "family": cond.family,
        "severity": cond.severity, "slice": slice_name, "target": target, "metric": metric,
        "value": est.value, "sd": est.sd, "ci_low": ci[0], "ci_high": ci[1],
        "delta_vs_clean": np.nan, "delta_ci_low": np.nan, "delta_ci_high": np.nan,
        "gap_vs_all": np.nan, "gap_ci_low": np.nan, "gap_ci_high": np.nan,
        "n": est.n, "small_slice": slice_name != ALL and est.n < min_slice_n,
    }
    if clean is not None and delta_ci is not None:
        row.update(delta_vs_clean=est.value - clean.value, delta_ci_low=delta_ci[0],
                   delta_ci_high=delta_ci[1])
    if whole is not None and gap_ci is not None:
        row.update(gap_vs_all=est.value - whole.value, gap_ci_low=gap_ci[0],
                   gap_ci_high=gap_ci[1])
    return row


def _intervals(draws: list[np.ndarray]) -> list[tuple[float, float]]:
    """``percentile_ci`` of each draw vector, computed by :func:`percentile_cis` on the stacked
    (K, B) matrix (vectors of different lengths are stacked by length)."""
    out: list[tuple[float, float]] = [(np.nan, np.nan)] * len(draws)
    by_len: dict[int, list[int]] = {}
    for i, d in enumerate(draws):
        by_len.setdefault(len(d), []).append(i)
    for pos in by_len.values():
        lo, hi = percentile_cis(np.stack([draws[i] for i in pos]))
        for i, a, b in zip(pos, lo.tolist(), hi.tolist(), strict=True):
            out[i] = (a, b)
    return out


def _members(ids: list[str], membership: pd.DataFrame | None) -> dict[str, np.ndarray]:
    out = {ALL: np.ones(len(ids), bool)}
    if membership is None or membership.empty:
        return out
    pos = {sid: i for i, sid in enumerate(ids)}
    for name, grp in membership.groupby("slice", sort=True):
        m = np.zeros(len(ids), bool)
        m[[pos[s] for s in grp["id"] if s in pos]] = True
        if m.any():
            out[str(name)] = m
    return out


def aggregate_per_image(per_sample: pd.DataFrame, conditions: pd.DataFrame, n_bootstrap: int,
                        seed: int, membership: pd.DataFrame | None = None,
                        min_slice_n: int = 10,
                        draws_out: dict[Key, Estimate] | None = None,
                        reference: dict[Key, Estimate] | None = None) -> pd.DataFrame:
    """Segmentation metrics per condition × slice × target with paired CIs.

    ``reference``: estimates of the in-domain clean condition, used for Δ when this table holds
    another dataset (``--shift-data``; then Δ intervals are unpaired).
    """
    ps = per_sample
    targets = sorted(ps["target"].unique())
    if len(targets) > 1:
        per_image = ps[~ps["metric"].isin(LESION_COUNTS)]
        macro = per_image.groupby(["condition", "id", "metric"], as_index=False)["value"].mean()
        macro["target"] = MACRO
        ps = pd.concat([ps, macro], ignore_index=True)
    ids = sorted(ps["id"].unique())
    idx = bootstrap_indices(len(ids), n_bootstrap, derive_seed(seed, "bootstrap"))
    counts = resample_counts(idx, len(ids))
    members = _members(ids, membership)
    estimates: dict[Key, Estimate] = {}
    for (target, metric), grp in ps.groupby(["target", "metric"], sort=True):
        if metric in LESION_COUNTS:
            continue
        wide = grp.pivot(index="id", columns="condition", values="value").reindex(ids)
        for cond in wide.columns:
            v = wide[cond].to_numpy(np.float64)
            for sl, m in members.items():
                estimates[(cond, sl, target, metric)] = mean_estimate(v, m, counts)
    lesions = ps[ps["metric"].isin(LESION_COUNTS)]
    for (target, cond), grp in lesions.groupby(["target", "condition"], sort=True):
        wide = grp.pivot(index="id", columns="metric", values="value").reindex(ids).fillna(0)
        tp, fn, fp = (wide[c].to_numpy(np.float64) for c in LESION_COUNTS)
        for sl, m in members.items():
            for metric, est in pooled_lesion_estimates(tp, fn, fp, m, counts).items():
                estimates[(cond, sl, target, metric)] = est
    return _table(estimates, conditions, min_slice_n, draws_out, reference)


def _table(estimates: dict[Key, Estimate], conditions: pd.DataFrame, min_slice_n: int,
           draws_out: dict[Key, Estimate] | None,
           reference: dict[Key, Estimate] | None) -> pd.DataFrame:
    picked = []
    keys = sorted({(sl, t, m) for (_, sl, t, m) in estimates})
    ref = reference if reference is not None else estimates
    for cond in conditions.itertuples():
        for sl, target, metric in keys:
            est = estimates.get((cond.condition, sl, target, metric))
            if est is None:
                continue
            clean = ref.get(("clean", sl, target, metric))
            whole = estimates.get((cond.condition, ALL, target, metric)) if sl != ALL else None
            picked.append((cond, sl, target, metric, est, clean, whole))
    # every interval of the table from a few batched percentile calls (same values as
    # percentile_ci on each draw vector): the estimate, its Δ vs clean, its gap vs all
    cis = _intervals([p[4].draws for p in picked])
    delta_at = [i for i, p in enumerate(picked) if p[5] is not None]
    gap_at = [i for i, p in enumerate(picked) if p[6] is not None]
    delta_cis = dict(zip(delta_at, _intervals([picked[i][4].draws - picked[i][5].draws
                                               for i in delta_at]), strict=True))
    gap_cis = dict(zip(gap_at, _intervals([picked[i][4].draws - picked[i][6].draws
                                           for i in gap_at]), strict=True))
    rows = [_row(*p, min_slice_n, cis[i], delta_cis.get(i), gap_cis.get(i))
            for i, p in enumerate(picked)]
    if draws_out is not None:
        draws_out.update(estimates)
    return pd.DataFrame(rows, columns=COLUMNS)


def aggregate_classification(predictions: pd.DataFrame, conditions: pd.DataFrame,
                             multi_label: bool, thresholds: dict[str, float] | float,
                             n_bootstrap: int, seed: int,
                             membership: pd.DataFrame | None = None,
                             slice_conditions: tuple[str, ...] = ("clean",),
                             min_slice_n: int = 10, progress: bool = False,
                             draws_out: dict[Key, Estimate] | None = None,
                             reference: dict[Key, Estimate] | None = None) -> pd.DataFrame:
    """Set-level classification metrics per condition × slice × target and macro.

    Decisions for ``f1``: ``prob >= threshold[target]`` (multi-label; thresholds chosen on the
    calibration split when one is given) or the argmax class (multi-class, one-vs-rest).
    Slices are computed for ``slice_conditions`` only (each costs a bootstrap per metric).
    """
    ids = sorted(predictions["id"].unique())
    targets = list(dict.fromkeys(predictions["target"]))
    thresholds = rundir.per_target_thresholds(thresholds, targets)
    idx_all = bootstrap_indices(len(ids), n_bootstrap, derive_seed(seed, "bootstrap"))
    members = _members(ids, membership)
    estimates: dict[Key, Estimate] = {}
    groups = predictions.groupby("condition", sort=False)
    for cond, grp in tqdm(groups, total=groups.ngroups, desc="bootstrap CIs", unit="condition",
                          leave=False, disable=not progress):
        probs = grp.pivot(index="id", columns="target", values="prob").reindex(ids)[targets]
        labels = grp.pivot(index="id", columns="target", values="label").reindex(ids)[targets]
        p_all, y_all = probs.to_numpy(np.float64), labels.to_numpy(np.float64)
        if multi_label:
            thr = np.array([thresholds[t] for t in targets])
            decision_all = (p_all >= thr).astype(np.float64)
        else:
            decision_all = np.eye(len(targets))[np.argmax(p_all, axis=1)]
        slices = members if str(cond) in slice_conditions else {ALL: members[ALL]}
        for sl, m in slices.items():
            idx = idx_all if sl == ALL else bootstrap_indices(
                int(m.sum()), n_bootstrap, derive_seed(seed, "bootstrap", sl))
            per_target = {t: classification_estimates(y_all[m, k], p_all[m, k],
                                                       decision_all[m, k], idx)
                          for k, t in enumerate(targets)}
            for t, metrics in per_target.items():
                for metric, est in metrics.items():
                    estimates[(str(cond), sl, t, metric)] = est
            if len(targets) > 1:
                for metric in per_target[targets[0]]:
                    estimates[(str(cond), sl, MACRO, metric)] = macro_estimate(
                        per_target[t][metric] for t in targets)
    return _table(estimates, conditions, min_slice_n, draws_out, reference)


#: where each kind of predictions comes from, as named in messages and ``run.json``
SPLITS = {"test": "clean", "shift_data": "shift_data"}


def one_class_reasons(predictions: pd.DataFrame) -> dict[str, str]:
    """Targets of one condition's long predictions (``id, target, label``) with a single
    class, and why: ``"no positives in 12 images"`` / ``"no negatives in 12 images"``."""
    out = {}
    for target, grp in predictions.groupby("target", sort=False):
        labels = pd.to_numeric(grp["label"], errors="coerce")
        n, pos = len(labels), int((labels > 0.5).sum())
        if pos in (0, n):
            out[str(target)] = f"no {'positives' if pos == 0 else 'negatives'} in {n} images"
    return out


def undefined_metrics(reason: str) -> str:
    """Which metrics a one-class ``reason`` (from :func:`one_class_reasons`) leaves undefined."""
    if reason.startswith("no negatives"):
        return "AUROC and sens@95spec undefined, AUPRC trivially 1"
    return "AUROC, AUPRC and sens@95spec undefined"


def undefined_targets(run_dir: str | Path, warn: bool = True) -> dict[str, dict[str, str]]:
    """``{split: {target: reason}}`` for targets with one class in a classification run's
    test (``clean``) and second-site (``shift_data``) predictions; empty for segmentation.

    With ``warn``: one ``warning: ...`` line per affected split on stderr, naming the targets,
    the split and how many targets the macro averages keep."""
    out: dict[str, dict[str, str]] = {}
    for split, condition in SPLITS.items():
        path = rundir.condition_path(run_dir, condition, "classification")
        if not path.exists():
            continue
        preds = pd.read_parquet(path, columns=["id", "target", "label"])
        reasons = one_class_reasons(preds)
        if not reasons:
            continue
        out[split] = reasons
        if warn:
            n_targets = preds["target"].nunique()
            named = "; ".join(f"'{t}' ({why}: {undefined_metrics(why)})"
                              for t, why in reasons.items())
            kept = n_targets - len(reasons)
            macro = ("" if n_targets < 2 else "; the macro average is undefined too" if not kept
                     else f"; the macro average leaves {'it' if len(reasons) == 1 else 'them'} "
                     f"out (over {kept} of {n_targets} targets)")
            print(f"warning: one class in the {split} split for {named}{macro}",
                  file=sys.stderr, flush=True)
    return out


def macro_coverage(metrics: pd.DataFrame, metric: str, condition: str = "clean",
                   slice_name: str = ALL) -> tuple[int, int, list[str]]:
    """(targets kept, targets in all, targets left out) by the macro value of ``metric`` at
    ``condition`` and slice: the per-target rows whose value is not finite."""
    m = metrics[(metrics["metric"] == metric) & (metrics["condition"] == condition)
                & (metrics["slice"] == slice_name) & (metrics["target"] != MACRO)]
    values = pd.to_numeric(m["value"], errors="coerce").to_numpy(np.float64)
    out = [str(t) for t, v in zip(m["target"], values, strict=True) if not np.isfinite(v)]
    return len(m) - len(out), len(m), out
