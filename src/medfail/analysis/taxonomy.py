"""The failure taxonomy of a run: four buckets, each entry filled with this run's evidence.

Buckets and entries (fixed, so runs compare): **data** (acquisition / contrast, artifacts, class
imbalance, label noise, rare morphologies), **model** (overconfidence, calibration drift, boundary
errors, spurious cues), **evaluation** (metric blind spots, threshold sensitivity, poor
subpopulation coverage), **human factors** (ambiguous labels, prompt misplacement, annotation
variability).

Each entry has a ``status``: ``breaks`` (an effect whose 95 % CI excludes 0 on the harmful side),
``measured`` (probed; the finding is reported without a significance claim, or no harmful effect
was found) or ``not probed`` (nothing in this run measures it — never filled with a guess).
``effect``/``ci`` are on the entry's own metric; ``figure`` names the report figure to look at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import ALL, harmful
from medfail.analysis.causes import cause_of
from medfail.analysis.discovery import finding_text, unnamed
from medfail.analysis.run_tables import RunTables

BUCKETS = ("data", "model", "evaluation", "human factors")
CONFIDENT = 0.95  # label-noise flag: probability this far on the wrong side
SECONDARY = {"classification": ("auprc", "f1", "sens_at_95spec"),
             "segmentation": ("lesion_f1", "nsd", "boundary_f1", "hd95"),
             "promptable": ("lesion_f1", "nsd", "boundary_f1", "hd95")}


@dataclass
class Entry:
    bucket: str
    entry: str
    status: str
    probes: str
    finding: str
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    figure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _not_probed(bucket: str, entry: str, why: str) -> Entry:
    return Entry(bucket, entry, "not probed", "—", f"not probed in this run: {why}")


def _from_ranking(t: RunTables, bucket: str, entry: str, rows: pd.DataFrame, what: str,
                  figure: str | None) -> Entry:
    """An entry from ranking rows (conditions or slices) that probe it: the worst one."""
    if rows.empty:
        return _not_probed(bucket, entry, f"no {what} in this run")
    probes = ", ".join(dict.fromkeys(rows["test"] if rows["kind"].iloc[0] == "condition"
                                     else rows["name"]))
    worst = rows.iloc[0]
    verb = "under" if worst["kind"] == "condition" else "on slice"
    finding = (f"{worst['metric']} {worst['reference']:.3f} → {worst['value']:.3f} {verb} "
               f"{worst['name']} (n = {int(worst['n'])})")
    n_sig = int(rows["significant"].sum())
    status = "breaks" if bool(worst["significant"]) else "measured"
    if status == "breaks":
        finding += f"; {n_sig} of {len(rows)} significant"
    else:
        finding += "; no significant harm"
    return Entry(bucket, entry, status, probes, finding, float(worst["effect"]),
                 float(worst["effect_ci_low"]), float(worst["effect_ci_high"]), figure)


def _stress_rows(t: RunTables, entry: str) -> pd.DataFrame:
    r = t.ranking
    r = r[r["kind"] == "condition"]
    keep = [cause_of(str(x.test), str(x.family)).entry == entry for x in r.itertuples()]
    return r[np.asarray(keep, dtype=bool)] if len(r) else r


#: slice-name prefixes per taxonomy entry (``gt.`` = ground-truth rules, ``meta.`` = metadata)
ACQUISITION_SLICES = ("meta.site=", "meta.protocol=", "meta.scanner=", "meta.vendor=",
                      "meta.pixel_spacing=")
MORPHOLOGY_SLICES = ("gt.shape=", "gt.size=", "gt.objects=", "meta.shape=", "meta.lesion_size=",
                     "meta.n_lesions=")
LOCATION_SLICES = ("gt.location=", "meta.location=")


def _slice_rows(t: RunTables, prefixes: tuple[str, ...]) -> pd.DataFrame:
    """Slices whose name starts with one of ``prefixes``, without the no-object slices."""
    r = t.ranking
    empty = r["name"].str.endswith(("=none", "=0"))
    return r[(r["kind"] == "slice") & r["name"].str.startswith(prefixes) & ~empty]


def _figure_for(t: RunTables, rows: pd.DataFrame) -> str | None:
    if rows.empty:
        return None
    if rows["kind"].iloc[0] == "slice":
        return f"slices_{t.primary}"
    return f"degradation_{rows['family'].iloc[0]}_{t.primary}"


def _acquisition(t: RunTables) -> Entry:
    rows = pd.concat([_stress_rows(t, "acquisition / contrast"),
                      _slice_rows(t, ACQUISITION_SLICES)])
    rows = rows.sort_values(["significant", "effect"], ascending=[False, True])
    return _from_ranking(t, "data", "acquisition / contrast", rows,
                         "intensity, resolution, site or protocol probes", _figure_for(t, rows))


def _artifacts(t: RunTables) -> Entry:
    rows = _stress_rows(t, "artifacts")
    return _from_ranking(t, "data", "artifacts", rows, "artifact tests", _figure_for(t, rows))


def _imbalance(t: RunTables) -> Entry:
    if t.task == "classification":
        clean = t.predictions("clean")
        prev = clean.groupby("target")["label"].mean()
        rare = str(prev.idxmin())
        auprc = t.metric("auprc", target=rare)
        auroc = t.metric("auroc", target=rare)
        finding = ("prevalence per target: " + ", ".join(f"{k} {v:.0%}" for k, v in prev.items())
                   + f"; rarest ({rare}): AUPRC {auprc['value']:.3f} vs chance {prev[rare]:.3f}"
                   if auprc is not None else "")
        if auroc is not None:
            finding += f", AUROC {auroc['value']:.3f}"
        return Entry("data", "class imbalance", "measured", "target prevalence", finding,
                     figure=f"slices_{t.primary}")
    ps = t.per_sample
    tp = ps[(ps["condition"] == "clean") & (ps["metric"].isin(["lesion_tp", "lesion_fn",
                                                                "lesion_fp"]))]
    wide = tp.pivot_table(index="id", columns="metric", values="value", aggfunc="sum")
    empty = wide[(wide["lesion_tp"] + wide["lesion_fn"]) == 0]
    if empty.empty:
        return Entry("data", "class imbalance", "measured", "images without foreground",
                     "every test image has foreground: false positives on empty images not "
                     "measurable")
    fp_rate = float((empty["lesion_fp"] > 0).mean())
    return Entry("data", "class imbalance", "measured", "images without foreground",
                 f"{len(empty)} of {len(wide)} test images ({len(empty) / len(wide):.0%}) have no "
                 f"foreground; the model predicts a lesion on {fp_rate:.0%} of them (clean)")


def _cleanlab_noise(t: RunTables, issues: pd.DataFrame) -> Entry:
    """The label-noise entry from ``label_issues.parquet`` (cleanlab)."""
    split = str(issues["split"].iloc[0])
    flagged = issues[issues["issue"].astype(bool)]
    top = issues.sort_values("rank").head(5)
    if t.task == "classification":
        unit = "labels"
        names = ", ".join(f"{r.id}/{r.target} (given {int(r.given_label)}, p {r.prob:.2f})"
                          for r in top.itertuples())
    else:
        unit = "masks"
        names = ", ".join(f"{r.id} (quality {r.quality:.2f})" for r in top.itertuples())
    finding = (f"cleanlab (confident learning on out-of-sample probabilities) flags "
               f"{len(flagged)} of {len(issues)} {unit} on the {split} split as likely label "
               f"errors; lowest label quality, to re-read first: {names}")
    return Entry("data", "label noise", "measured", f"cleanlab label issues, {split} split",
                 finding, float(len(flagged)))


def _label_noise(t: RunTables) -> Entry:
    issues = t.label_issues
    if issues is not None and len(issues):
        return _cleanlab_noise(t, issues)
    if t.task == "classification":
        split = "calibration"
        path = rundir.condition_path(t.run_dir, rundir.CALIBRATION_SPLIT, "classification")
        pred = pd.read_parquet(path) if path.exists() else t.predictions("clean")
        split = split if path.exists() else "clean test"
        flag = ((pred["label"] == 0) & (pred["prob"] >= CONFIDENT)) | \
            ((pred["label"] == 1) & (pred["prob"] <= 1 - CONFIDENT))
        hits = pred[flag]
        ids = ", ".join(f"{r.id}/{r.target}" for r in hits.head(5).itertuples())
        finding = (f"{len(hits)} of {len(pred)} labels on the {split} split are contradicted "
                   f"with probability ≥ {CONFIDENT}: likely label errors to re-read"
                   + (f" (e.g. {ids})" if ids else ""))
        return Entry("data", "label noise", "measured", f"confident disagreement, {split} split",
                     finding, float(len(hits)))
    ps = t.per_sample
    dice = ps[(ps["condition"] == "clean") & (ps["metric"] == "dice")
              & (ps["target"] == t.target)].set_index("id")["value"]
    conf = t.confidence("clean")
    conf = conf[(conf["signal"] == "mask_confidence") & (conf["target"] == t.target)]
    conf = conf.set_index("id")["value"].reindex(dice.index)
    hits = dice[(dice < 0.5) & (conf >= 0.9)]
    return Entry("data", "label noise", "measured", "confident disagreement, clean test images",
                 f"{len(hits)} of {len(dice)} clean images have Dice < 0.5 with mask confidence "
                 f"≥ 0.9: candidate mask errors to re-read"
                 + (f" ({', '.join(hits.index[:5])})" if len(hits) else ""), float(len(hits)))


def _morphology(t: RunTables) -> Entry:
    rows = _slice_rows(t, MORPHOLOGY_SLICES)
    return _from_ranking(t, "data", "rare morphologies", rows, "shape or size slices",
                         _figure_for(t, rows))


def _ece_metric(t: RunTables) -> tuple[str, str]:
    return ("ece", "max_prob") if t.task == "classification" else ("pixel_ece_band", "pixel")


def _ece(t: RunTables, condition: str) -> float | None:
    cal = t.calibration
    if cal is None:
        return None
    metric, method = _ece_metric(t)
    target = t.calibration_target
    rows = cal[(cal["condition"] == condition) & (cal["metric"] == metric)
               & (cal["method"] == method) & (cal["target"] == target)]
    return None if rows.empty else float(rows["value"].iloc[0])


def _overconfidence(t: RunTables) -> Entry:
    clean = _ece(t, "clean")
    if clean is None:
        return _not_probed("model", "overconfidence", "no calibration table")
    metric = _ece_metric(t)[0]
    figure = "reliability_clean" if t.task == "classification" else "pixel_reliability"
    finding = f"{metric} on clean images {clean:.3f}"
    if len(t.breaking):
        worst = str(t.breaking["name"].iloc[0])
        w = _ece(t, worst)
        if w is not None:
            finding += f"; under {worst} {w:.3f}"
    return Entry("model", "overconfidence", "measured", metric, finding, clean, figure=figure)


def _drift(t: RunTables) -> Entry:
    cal = t.calibration
    clean = _ece(t, "clean")
    if cal is None or clean is None:
        return _not_probed("model", "calibration drift", "no calibration table")
    metric, method = _ece_metric(t)
    target = t.calibration_target
    rows = cal[(cal["metric"] == metric) & (cal["method"] == method) & (cal["target"] == target)
               & (cal["severity"] > 0) & ~cal["condition"].str.contains("|", regex=False)]
    if rows.empty:
        return _not_probed("model", "calibration drift", "no stress conditions")
    w = rows.loc[rows["value"].idxmax()]
    rise = float(w["value"]) - clean
    return Entry("model", "calibration drift", "measured", f"{metric} under stress",
                 f"{metric} rises from {clean:.3f} (clean) to {w['value']:.3f} under "
                 f"{w['condition']} (+{rise:.3f})", rise, figure="calibration_drift")


def _boundary(t: RunTables) -> Entry:
    if t.task == "classification":
        return _not_probed("model", "boundary errors", "classification has no boundaries")
    if not len(t.breaking):
        return Entry("model", "boundary errors", "measured", "boundary_f1, nsd",
                     "no condition breaks the model's Dice")
    worst = str(t.breaking["name"].iloc[0])
    d, b = t.metric("dice", worst), t.metric("boundary_f1", worst)
    clean_b = t.metric("boundary_f1", "clean")
    if d is None or b is None or clean_b is None:
        return _not_probed("model", "boundary errors", "boundary_f1 not computed")
    sig = harmful("boundary_f1", b["delta_ci_low"], b["delta_ci_high"])
    return Entry("model", "boundary errors", "breaks" if sig else "measured",
                 "boundary_f1, nsd, per-pixel ECE in the 5 px band",
                 f"boundary F1 {clean_b['value']:.3f} clean → {b['value']:.3f} under {worst} "
                 f"(Dice Δ {d['delta_vs_clean']:+.3f})", float(b["delta_vs_clean"]),
                 float(b["delta_ci_low"]), float(b["delta_ci_high"]),
                 f"degradation_{b['family']}_dice")


def _spurious(t: RunTables) -> Entry:
    found = t.confirmed_slices
    found = found[[unnamed(str(n)) for n in found["slice"]]] if len(found) else found
    if len(found):
        top = found.iloc[0]
        n_all = 0 if t.discovery is None else len(t.discovery)
        return Entry("model", "spurious cues", "breaks",
                     "slice discovery (SliceLine + embedding groups, confirmed on the held-out "
                     "half); location and metadata slices",
                     f"discovered slice {finding_text(top, t.task)}; {len(found)} unnamed of "
                     f"{n_all} candidates confirmed", float(top["gap"]), float(top["ci_low"]),
                     float(top["ci_high"]), "embedding_map")
    rows = _slice_rows(t, LOCATION_SLICES)
    r = t.ranking
    named = r["name"].str
    meta = r[(r["kind"] == "slice") & ~named.endswith(("=none", "=0")) & ~named.startswith(
        ("gt.", *LOCATION_SLICES, *MORPHOLOGY_SLICES, *ACQUISITION_SLICES))]
    rows = pd.concat([rows, meta]).sort_values(["significant", "effect"],
                                               ascending=[False, True])
    return _from_ranking(t, "model", "spurious cues", rows,
                         "location or metadata slices", _figure_for(t, rows))


def _blind_spots(t: RunTables) -> Entry:
    m = t.metrics
    m = m[(m["slice"] == ALL) & (m["target"] == t.target) & (m["condition"] != "clean")
          & m["family"].isin(["corruption", "domain_shift", "prompt"])]
    prim = m[m["metric"] == t.primary].set_index("condition")
    best: tuple[float, str] | None = None
    for sec in SECONDARY[t.task]:
        both = prim.join(m[m["metric"] == sec].set_index("condition"), rsuffix="_s", how="inner")
        for cond, r in both.iterrows():
            p_harm = harmful(t.primary, r["delta_ci_low"], r["delta_ci_high"])
            s_harm = harmful(sec, r["delta_ci_low_s"], r["delta_ci_high_s"])
            if p_harm == s_harm:
                continue
            gap = abs(r["delta_vs_clean_s"]) + (1.0 if s_harm else 0.0)  # misses first
            text = (f"under {cond}: {t.primary} Δ {r['delta_vs_clean']:+.3f} "
                    f"[{r['delta_ci_low']:.3f}, {r['delta_ci_high']:.3f}] but {sec} Δ "
                    f"{r['delta_vs_clean_s']:+.3f} [{r['delta_ci_low_s']:.3f}, "
                    f"{r['delta_ci_high_s']:.3f}]: only {sec if s_harm else t.primary} "
                    "shows this harm")
            if best is None or gap > best[0]:
                best = (gap, text)
    if best is None:
        return Entry("evaluation", "metric blind spots", "measured",
                     f"{t.primary} vs {', '.join(SECONDARY[t.task])}",
                     "the metrics agree on which conditions are harmful")
    return Entry("evaluation", "metric blind spots", "breaks",
                 f"{t.primary} vs {', '.join(SECONDARY[t.task])}", best[1])


def _threshold(t: RunTables) -> Entry:
    if t.task == "classification":
        from medfail.metrics.classification import f1

        pred = t.predictions("clean")
        thresholds = rundir.per_target_thresholds(t.run.get("thresholds"),
                                                  pred["target"].unique())
        spans = []
        for target, grp in pred.groupby("target", sort=False):
            thr = thresholds[str(target)]
            y, p = grp["label"].to_numpy(), grp["prob"].to_numpy()
            f1s = [f1(y, (p >= min(max(thr + d, 0.0), 1.0)).astype(int))
                   for d in (-0.1, 0.0, 0.1)]
            spans.append((max(f1s) - min(f1s), str(target), f1s, thr))
        span, target, f1s, thr = max(spans)
        return Entry("evaluation", "threshold sensitivity", "measured",
                     "F1 at the decision threshold ± 0.1 (clean)",
                     f"{target}: F1 {f1s[0]:.3f} / {f1s[1]:.3f} / {f1s[2]:.3f} at thresholds "
                     f"{thr - 0.1:.2f} / {thr:.2f} / {thr + 0.1:.2f}", span)
    ev = t.evidence
    if ev is None or not ev["feature"].str.startswith("dice_at_").any():
        return _not_probed("evaluation", "threshold sensitivity", "no evidence table")
    means = ev[ev["feature"].str.startswith("dice_at_")].groupby("feature")["value"].mean()
    span = float(means.max() - means.min())
    return Entry("evaluation", "threshold sensitivity", "measured",
                 "Dice with probability cut at 0.3 / 0.5 / 0.7 (clean)",
                 "mean Dice " + " / ".join(f"{v:.3f}" for v in means.to_numpy())
                 + f" (span {span:.3f})", span)


def _coverage(t: RunTables) -> Entry:
    m = t.metrics
    small = m[(m["condition"] == "clean") & (m["slice"] != ALL) & m["small_slice"]
              & (m["metric"] == t.primary) & (m["target"] == t.target)]
    n_min = t.run["config"].get("min_slice_n", 10)
    if small.empty:
        return Entry("evaluation", "poor subpopulation coverage", "measured",
                     f"slices with n < {n_min}", f"every slice has at least {n_min} images")
    names = ", ".join(f"{r.slice} (n = {r.n})" for r in small.itertuples())
    return Entry("evaluation", "poor subpopulation coverage", "breaks", f"slices with n < {n_min}",
                 f"{len(small)} slices too small for a reliable estimate: {names}")


def _prompts(t: RunTables) -> Entry:
    if t.task != "promptable":
        return _not_probed("human factors", "prompt misplacement", "the model takes no prompts")
    r = t.ranking
    rows = r[(r["kind"] == "condition") & (r["family"] == "prompt")]
    return _from_ranking(t, "human factors", "prompt misplacement", rows, "prompt perturbations",
                         "prompt_sensitivity")


def _annotation(t: RunTables) -> Entry:
    ev = t.evidence
    if t.task == "classification" or ev is None or \
            not ev["feature"].str.startswith("gt_dice_").any():
        return _not_probed("human factors", "annotation variability",
                           "needs masks (or repeated annotations)")
    means = ev[ev["feature"].str.startswith("gt_dice_")].groupby("feature")["value"].mean()
    dice = t.metric("dice")
    floor = float(means.min())
    finding = (f"a 1-pixel disagreement in the masks alone gives Dice "
               f"{means.get('gt_dice_erode1', np.nan):.3f} (erode) / "
               f"{means.get('gt_dice_dilate1', np.nan):.3f} (dilate)")
    if dice is not None:
        finding += f"; the model's clean Dice is {dice['value']:.3f}"
    return Entry("human factors", "annotation variability", "measured",
                 "ground truth vs ground truth moved by 1 px", finding, floor)


BUILDERS: tuple[Callable[[RunTables], Entry], ...] = (
    _acquisition, _artifacts, _imbalance, _label_noise, _morphology,
    _overconfidence, _drift, _boundary, _spurious,
    _blind_spots, _threshold, _coverage,
    lambda t: _not_probed("human factors", "ambiguous labels",
                          "needs repeated reads or annotator confidence"),
    _prompts, _annotation)


def build_taxonomy(tables: RunTables) -> list[Entry]:
    """Every taxonomy entry for the run, in bucket order."""
    return [build(tables) for build in BUILDERS]
