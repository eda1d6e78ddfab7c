"""Figures for the report, drawn from ``metrics.parquet`` only (never from a model).

Every function draws whatever finite result it is given and never raises on weak-model
results: intervals are drawn as given (the estimate and the ``[ci_low, ci_high]`` segment
separately, so an interval that excludes its estimate is shown as such, marked ``*`` and
hollow); NaN/inf values are skipped with a note printed under the figure; an empty selection
gives a placeholder figure that says what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medfail.analysis.aggregate import harmful_side
from medfail.analysis.calibration import COVERAGE
from medfail.analysis.case_studies import VIEWS, orthogonal_views
from medfail.report.formatting import ci_excludes, num
from medfail.stress import registry

EXCLUDES_NOTE = "* 95% CI excludes the estimate (drawn as computed; hollow marker)"


def _save(fig: plt.Figure, path: Path, notes: Sequence[str] = ()) -> Path:
    """Lay out, add ``notes`` (one line each) under the axes, write ``path`` and close."""
    notes = list(dict.fromkeys(n for n in notes if n))
    bottom = 0.0
    if notes:
        height_pt = fig.get_figheight() * 72
        bottom = min(0.45, (len(notes) * 8.5 + 4) / height_pt)
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=6, color="#555", ha="left",
                 va="bottom")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def placeholder_figure(path: Path, title: str, message: str,
                       size: tuple[float, float] = (5.6, 2.0)) -> Path:
    """A figure that says why there is nothing to draw (instead of raising)."""
    fig, ax = plt.subplots(figsize=size, dpi=110)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=8, wrap=True)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _skipped_note(n: int, what: str = "value") -> str:
    return f"{n} non-finite {what}{'s' if n != 1 else ''} (NaN/inf) not drawn" if n else ""


def _intervals(ax: plt.Axes, pos: np.ndarray, value: np.ndarray, lo: np.ndarray,
               hi: np.ndarray, colors: Sequence[str] | str, horizontal: bool,
               size: float = 14) -> tuple[np.ndarray, int]:
    """Draw each finite ``[lo, hi]`` segment and each finite estimate at ``pos``.

    Estimates outside their interval are drawn hollow. Returns (excludes mask, number of
    non-finite estimates or interval ends skipped)."""
    n = len(pos)
    colors = [colors] * n if isinstance(colors, str) else list(colors)
    ok_v = np.isfinite(value)
    ok_ci = np.isfinite(lo) & np.isfinite(hi)
    excl = ci_excludes(value, lo, hi)
    skipped = int((~ok_v).sum() + ((np.isinf(lo) | np.isinf(hi)) & ok_v).sum())
    seg = (ax.hlines if horizontal else ax.vlines)
    for k in np.flatnonzero(ok_ci):
        seg(pos[k], lo[k], hi[k], color=colors[k], lw=1.2)
        for end in (lo[k], hi[k]):  # caps
            cap = (ax.vlines if horizontal else ax.hlines)
            cap(end, pos[k] - 0.15 if horizontal else pos[k] - 0.04 * _span(pos),
                pos[k] + 0.15 if horizontal else pos[k] + 0.04 * _span(pos),
                color=colors[k], lw=0.8)
    for k in np.flatnonzero(ok_v):
        xy = (value[k], pos[k]) if horizontal else (pos[k], value[k])
        ax.scatter(*xy, s=size, zorder=3, color="white" if excl[k] else colors[k],
                   edgecolors=colors[k], linewidths=1.0)
    return excl, skipped


def _span(pos: np.ndarray) -> float:
    finite = pos[np.isfinite(pos)]
    return float(finite.max() - finite.min()) if finite.size > 1 else 1.0


def _count(x: object) -> str:
    v = num([x])[0]
    return str(int(v)) if np.isfinite(v) else "?"


def _legend(ax: plt.Axes, **kwargs: object) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def degradation_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path,
                     family: str | None = None, title: str | None = None) -> Path:
    """Metric vs severity, one line per stress test, 95 % CI as a band; clean at severity 0."""
    title = title or f"{metric} under {family or 'stress'}, 95% bootstrap CI"
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    tests = m[(m["severity"] > 0) & (m["test"] != "shift_data")]
    if family is not None:
        tests = tests[tests["family"] == family]
    if clean.empty and tests.empty:
        return placeholder_figure(path, title, f"no {metric} ({target}) values in this run")
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    groups = list(tests.groupby("test", sort=True)) or [("clean", tests)]
    any_excl = False
    for test, grp in groups:
        grp = pd.concat([clean, grp]).sort_values("severity")
        x, v = num(grp["severity"]), num(grp["value"])
        lo, hi = num(grp["ci_low"]), num(grp["ci_high"])
        fin = np.isfinite(v)
        line, = ax.plot(x[fin], v[fin], marker="o", label=test)
        color = line.get_color()
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            ax.fill_between(x, np.where(band, lo, np.nan), np.where(band, hi, np.nan),
                            alpha=0.12, color=color)
        excl = ci_excludes(v, lo, hi)
        if excl.any():
            any_excl = True
            ax.scatter(x[excl], v[excl], s=30, zorder=3, color="white", edgecolors=color)
    shown = pd.concat([clean, tests])
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel(f"{metric} ({target})")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=6.5, loc="best", ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, [EXCLUDES_NOTE if any_excl else "",
                             _skipped_note(int((~np.isfinite(num(shown["value"]))).sum()))])


def _prompt_axis(test: str) -> tuple[str, dict[int, float]]:
    """The perturbation parameter of a prompt test and its value per severity (fallback: the
    severity itself, for a test this installation does not know)."""
    try:
        spec = registry.get(test)
        (param, _), = spec.severities[0].items()
        return param, {s + 1: float(p[param]) for s, p in enumerate(spec.severities)}
    except (ValueError, KeyError, TypeError):
        return "severity", {}


def prompt_sensitivity_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """One panel per prompt test: metric vs perturbation size (the severity's parameter)."""
    title = f"prompt sensitivity: {metric} vs perturbation size (95% CI)"
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    tests = sorted(m.loc[m["family"] == "prompt", "test"].unique())
    if not tests:
        return placeholder_figure(path, title, f"no prompt perturbation of {metric} ({target})")
    cols = 3
    rows = max(1, int(np.ceil(len(tests) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(8.4, 2.3 * rows + 0.3), dpi=110,
                             squeeze=False)
    any_excl, skipped = False, 0
    for ax, test in zip(axes.ravel(), tests, strict=False):
        param, size = _prompt_axis(test)
        grp = pd.concat([clean, m[m["test"] == test]]).sort_values("severity")
        sev = num(grp["severity"])
        x = np.array([0.0 if s <= 0 else size.get(int(s), float(s)) if np.isfinite(s)
                      else np.nan for s in sev])
        v, lo, hi = num(grp["value"]), num(grp["ci_low"]), num(grp["ci_high"])
        fin = np.isfinite(v) & np.isfinite(x)
        ax.plot(x[fin], v[fin], color="C0", lw=1)
        excl, skip = _intervals(ax, x, v, lo, hi, "C0", horizontal=False)
        any_excl |= bool(excl.any())
        skipped += skip
        ax.set_title(test, fontsize=8)
        ax.set_xlabel(param, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(tests):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, [EXCLUDES_NOTE if any_excl else "", _skipped_note(skipped)])


def slice_forest_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path,
                      condition: str = "clean") -> Path:
    """Slice values with 95 % CIs against the whole-set value; flagged small slices in grey.

    A slice whose metric is undefined (e.g. AUROC with one class in the slice) keeps its row,
    labelled ``n/a``; an interval that excludes its estimate is drawn as computed, marked ``*``.
    """
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["condition"] == condition)]
    whole = m[m["slice"] == "all"]
    sl = m[m["slice"] != "all"].sort_values("slice", ascending=False)
    title = "slices: red = significantly worse than the whole set, grey = few cases"
    if sl.empty:
        return placeholder_figure(path, title, f"no slice of {metric} ({target}) under "
                                  f"{condition} in this run")
    fig, ax = plt.subplots(figsize=(5.6, 0.28 * len(sl) + 1.4), dpi=110)
    y = np.arange(len(sl), dtype=np.float64)
    nan = pd.Series(np.nan, index=sl.index)
    gap_lo, gap_hi = num(sl.get("gap_ci_low", nan)), num(sl.get("gap_ci_high", nan))
    sig = harmful_side(metric, gap_lo, gap_hi)
    small = sl.get("small_slice", pd.Series(False, index=sl.index)).fillna(False)
    colors = np.where(small.to_numpy(bool), "#999999", np.where(sig, "#b00020", "#1f5fa8"))
    v, lo, hi = num(sl["value"]), num(sl["ci_low"]), num(sl["ci_high"])
    excl, skipped = _intervals(ax, y, v, lo, hi, colors, horizontal=True)
    whole_v = num(whole["value"])[:1]
    if whole_v.size and np.isfinite(whole_v[0]):
        ax.axvline(float(whole_v[0]), color="k", lw=1, ls="--", label="all")
    labels = [f"{s} (n={_count(n)})" + (" *" if e else "") + ("" if np.isfinite(val) else " n/a")
              for s, n, e, val in zip(sl["slice"], sl["n"], excl, v, strict=True)]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(-0.7, len(sl) - 0.3)
    ax.set_xlabel(f"{metric} ({target}), {condition}")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=8)
    n_na = int((~np.isfinite(v)).sum())
    return _save(fig, path, [
        EXCLUDES_NOTE if excl.any() else "",
        f"n/a: {metric} not finite in {n_na} slice{'s' if n_na != 1 else ''} (e.g. one class "
        "in the slice); not drawn" if n_na else "",
        _skipped_note(skipped - n_na, "interval end")])


def reliability_plot(y: np.ndarray, probs: dict[str, np.ndarray], path: Path,
                     title: str) -> Path:
    """Reliability diagrams, equal-width and equal-mass bins, one line per method, with counts.

    Samples with a NaN/inf or out-of-range probability or label are left out (noted)."""
    from medfail.metrics.calibration import reliability_bins

    y = num(y)
    usable: dict[str, np.ndarray] = {}
    notes = []
    for method, p in probs.items():
        p = num(p)
        if p.size != y.size:
            notes.append(f"{method}: {p.size} probabilities for {y.size} labels, not drawn")
            continue
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(p) & (p >= 0) & (p <= 1) & np.isin(y, (0.0, 1.0)))
        if (~ok).any():
            notes.append(f"{method}: {int((~ok).sum())} of {p.size} samples with a non-finite "
                         "or out-of-range value not drawn")
        if ok.any():
            usable[method] = ok
    if not usable:
        notes.append("no sample to draw")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=110)
    for ax, strategy in zip(axes, ("uniform", "quantile"), strict=True):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect")
        for k, (method, ok) in enumerate(usable.items()):
            rb = reliability_bins(y[ok], num(probs[method])[ok], n_bins=10, strategy=strategy)
            nz = rb.counts > 0
            line, = ax.plot(rb.mean_confidence[nz], rb.frequency[nz], marker="o",
                            label=f"{method} (ECE {rb.ece:.3f})")
            if k == 0:
                for x, f, c in zip(rb.mean_confidence[nz], rb.frequency[nz], rb.counts[nz],
                                   strict=True):
                    ax.annotate(str(int(c)), (x, f), fontsize=6, xytext=(2, -8),
                                textcoords="offset points", color=line.get_color())
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"{'equal-width' if strategy == 'uniform' else 'equal-mass'} bins "
                     "(numbers = bin counts)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, notes)


def _finite_pairs(x: object, y: object) -> tuple[np.ndarray, np.ndarray, int]:
    a, b = num(x), num(y)
    if a.size != b.size:
        return a[:0], b[:0], max(a.size, b.size)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok], int((~ok).sum())


def risk_coverage_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                       title: str) -> Path:
    """Selective risk vs coverage, one line per curve (non-finite points left out, noted)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    skipped, empty = 0, []
    for name, (coverage, risk) in curves.items():
        c, r, skip = _finite_pairs(coverage, risk)
        skipped += skip
        if c.size:
            ax.plot(c, r, label=name)
        else:
            empty.append(name)
    ax.axvline(COVERAGE, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("coverage (fraction of cases the model keeps)")
    ax.set_ylabel("risk (error rate of kept cases)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, [_skipped_note(skipped, "point"),
                             f"nothing to draw for: {', '.join(empty)}" if empty else "",
                             "" if curves else "no curve in this run"])


def calibration_drift_plot(table: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """A calibration metric vs severity per stress test (max_prob and temperature)."""
    title = f"calibration drift under stress: {metric}"
    t = table[(table["metric"] == metric) & (table["target"] == target)]
    if t.empty:
        return placeholder_figure(path, title, f"no {metric} ({target}) in the calibration "
                                  "table")
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    stress = t["family"].isin(("corruption", "domain_shift", "prompt"))
    skipped = 0
    for method, style in (("max_prob", "-"), ("temperature", "--")):
        m = t[t["method"] == method]
        clean = m[m["condition"] == "clean"]
        for i, (test, grp) in enumerate(m[(m["severity"] > 0) & stress[m.index]
                                          & (m["test"] != "shift_data")]
                                        .groupby("test", sort=True)):
            grp = pd.concat([clean, grp]).sort_values("severity")
            x, v, skip = _finite_pairs(grp["severity"], grp["value"])
            skipped += skip
            ax.plot(x, v, style, marker="o", ms=3, color=f"C{i % 10}",
                    label=test if method == "max_prob" else None)
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    scaled = (t["method"] == "temperature").any()
    ax.set_xlabel("severity" + (" (solid: raw, dashed: temperature-scaled)" if scaled else ""))
    ax.set_ylabel(f"{metric} ({target})")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=6.5, ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, [_skipped_note(skipped)])


def binned_reliability_plot(tables: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Per-pixel reliability from binned sums (count, sum_prob, sum_label), one line per table."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect")
    skipped, empty = 0, []
    for name, t in tables.items():
        count = num(t["count"]) if "count" in t else np.zeros(0)
        ok = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = num(t["sum_prob"])[ok] / count[ok] if ok.any() else count[:0]
            freq = num(t["sum_label"])[ok] / count[ok] if ok.any() else count[:0]
        c, f, skip = _finite_pairs(conf, freq)
        skipped += skip
        if c.size:
            ax.plot(c, f, marker="o", label=name)
        else:
            empty.append(name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted foreground probability (pixels)")
    ax.set_ylabel("observed foreground frequency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, [_skipped_note(skipped, "bin"),
                             f"no pixel in any bin for: {', '.join(empty)}" if empty else ""])


def compare_plot(table: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """Δ (B − A) per condition with paired 95 % CIs, sorted (undefined Δ last, ``n/a``)."""
    if table.empty:
        return placeholder_figure(path, f"Δ {metric} ({target}), B − A",
                                  "no condition in common")
    t = table.assign(_d=num(table["delta"])).sort_values("_d", na_position="last")
    fig, ax = plt.subplots(figsize=(5.6, 0.22 * len(t) + 1.4), dpi=110)
    y = np.arange(len(t), dtype=np.float64)
    d, lo, hi = num(t["delta"]), num(t["ci_low"]), num(t["ci_high"])
    excl, skipped = _intervals(ax, y, d, lo, hi, "C0", horizontal=True, size=10)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{c}" + (" *" if e else "") + ("" if np.isfinite(v) else " n/a")
                      for c, e, v in zip(t["condition"], excl, d, strict=True)], fontsize=6.5)
    ax.set_ylim(-0.7, len(t) - 0.3)
    ax.set_xlabel(f"Δ {metric} ({target}), B − A")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path, [EXCLUDES_NOTE if excl.any() else "", _skipped_note(skipped)])


def _gray(image: np.ndarray, value_range: np.ndarray) -> np.ndarray:
    """Image in [0, 1] for display (channel-first in; NaN/inf shown as the range ends)."""
    x = np.asarray(image, np.float64)
    x = x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)
    lo, hi = (float(v) for v in num(value_range)[:2])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        fin = x[np.isfinite(x)]
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    x = np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
    return np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def _prob_map(p: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(p, np.float32), nan=0.0, posinf=1.0, neginf=0.0),
                   0, 1)


def _crosses(a: np.ndarray, level: float = 0.5) -> bool:
    """A contour at ``level`` exists (else matplotlib warns)."""
    return bool((a >= level).any() and (a < level).any())


def display_window(volume: np.ndarray) -> np.ndarray:
    """A volume's grey-level window for display: the 1st-99.5th percentiles of its voxels above
    ``p1 + 10 % (p99 - p1)`` (the body, not the air or background around it)."""
    x = np.asarray(volume, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return np.array([0.0, 1.0])
    p1, p99 = np.percentile(x, [1, 99])
    body = x[x > p1 + 0.1 * (p99 - p1)]
    lo, hi = np.percentile(body if body.size else x, [1, 99.5])
    return np.array([lo, hi if hi > lo else lo + 1.0])


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of a probability map (the confidence shown in case figures)."""
    eps = 1e-6
    return -(p * np.log2(p + eps) + (1 - p) * np.log2(1 - p + eps))


def volume_case_figure(case: dict[str, np.ndarray], path: Path,
                       spacing: tuple[float, ...] | None = None) -> Path:
    """A volume case: the axial, coronal and sagittal planes through the failure
    (:func:`medfail.analysis.case_studies.failure_point`, yellow cross) of the clean and
    stressed input, the prediction under stress and its entropy, with the GT contour."""
    views = orthogonal_views(case, spacing)
    window = display_window(np.asarray(case["clean"])[0])
    fig, axes = plt.subplots(3, 4, figsize=(9.0, 5.4), dpi=110)
    labels = ("clean input + GT (green)", "stressed input + GT",
              "prediction under stress\n(probability, contour p = 0.5)",
              "entropy (bits) under stress")
    for r, (view, v) in enumerate(views.items()):
        gt = (v["mask"] == 1).astype(float)
        p, p_clean = _prob_map(v["prob"]), _prob_map(v["prob_clean"])
        panels = [(v["clean"], None), (v["image"], None), (v["image"], p), (None, _entropy(p))]
        for k, (ax, (base, over)) in enumerate(zip(axes[r], panels, strict=True)):
            if base is not None:
                ax.imshow(_gray(base[None], window), cmap="gray", vmin=0, vmax=1,
                          aspect=v["aspect"])
            if k == 3:
                im = ax.imshow(over, cmap="magma", vmin=0, vmax=1, aspect=v["aspect"])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            elif over is not None:
                ax.imshow(np.ma.masked_less(over, 0.05), cmap="autumn", alpha=0.55, vmin=0,
                          vmax=1, aspect=v["aspect"])
                if _crosses(over):
                    ax.contour(over, levels=[0.5], colors="red", linewidths=0.8)
            if k < 3 and _crosses(gt):
                ax.contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
            if k == 0 and _crosses(p_clean):
                ax.contour(p_clean, levels=[0.5], colors="red", linewidths=0.6,
                           linestyles="--")
            row, col = v["point"]
            ax.plot([col], [row], marker="+", color="yellow", markersize=7, mew=0.8)
            if r == 0:
                ax.set_title(labels[k], fontsize=7.5)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
        axes[r][0].set_ylabel(f"{view} {'xyz'[VIEWS[view]]}={v['index']}", fontsize=7.5)
    fig.text(0.01, 0.005, "radiological convention: patient's right on the left; anterior / "
             "superior up", fontsize=6.5)
    return _save(fig, path)


def segmentation_case_figure(case: dict[str, np.ndarray], path: Path,
                             spacing: tuple[float, ...] | None = None) -> Path:
    """Input with GT contour, clean and stressed probability overlays, and the entropy map
    (a volume, ``mask`` of 3 dims: :func:`volume_case_figure`)."""
    if np.ndim(case["mask"]) == 3:
        return volume_case_figure(case, path, spacing)
    img, clean = _gray(case["image"], case["value_range"]), _gray(case["clean"],
                                                                   case["value_range"])
    gt = (np.asarray(case["mask"]) == 1).astype(float)
    p = _prob_map(case["prob"][0])
    p_clean = _prob_map(case["prob_clean"][0])
    entropy = _entropy(p)
    fig, axes = plt.subplots(1, 4, figsize=(9.6, 2.7), dpi=110)
    panels = [(clean, None, "clean input + GT (green)"), (img, None, "stressed input + GT"),
              (img, p, "prediction under stress\n(probability, contour p = 0.5)"),
              (None, entropy, "entropy (bits) under stress")]
    for k, (ax, (base, over, label)) in enumerate(zip(axes, panels, strict=True)):
        if base is not None:
            ax.imshow(base, cmap="gray", vmin=0, vmax=1)
        if k == 3:
            im = ax.imshow(over, cmap="magma", vmin=0, vmax=1)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        elif over is not None:
            ax.imshow(np.ma.masked_less(over, 0.05), cmap="autumn", alpha=0.55, vmin=0, vmax=1)
            if _crosses(over):
                ax.contour(over, levels=[0.5], colors="red", linewidths=0.8)
        if k < 3 and _crosses(gt):
            ax.contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        if k == 0 and _crosses(p_clean):
            ax.contour(p_clean, levels=[0.5], colors="red", linewidths=0.6, linestyles="--")
        ax.set_title(label, fontsize=7.5)
        ax.set_axis_off()
    return _save(fig, path)


def classification_case_figure(case: dict[str, np.ndarray], probs: pd.DataFrame, target: str,
                               path: Path) -> Path:
    """Clean and stressed input with occlusion saliency, and the probabilities per target."""
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.8), dpi=110,
                             gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for ax, key, sal, label in ((axes[0], "clean", "saliency_clean", "clean input"),
                                (axes[1], "image", "saliency", "stressed input")):
        base = _gray(case[key], case["value_range"])
        ax.imshow(base, cmap="gray", vmin=0, vmax=1)
        s = np.asarray(case[sal], np.float32)
        s = np.where(np.isfinite(s), s, 0.0)
        lim = max(float(np.abs(s).max()) if s.size else 0.0, 1e-6)
        ax.imshow(s, cmap="coolwarm", alpha=0.45, vmin=-lim, vmax=lim,
                  extent=(-0.5, base.shape[1] - 0.5, base.shape[0] - 0.5, -0.5),
                  interpolation="nearest")
        ax.set_title(f"{label}; occlusion saliency for {target}\n(red = supports it)",
                     fontsize=7.5)
        ax.set_axis_off()
    ax = axes[2]
    y = np.arange(len(probs))
    bars = {}
    for col in ("prob_clean", "prob"):
        v = num(probs[col])
        bars[col] = (np.clip(np.where(np.isfinite(v), v, 0.0), 0, 1), ~np.isfinite(v))
    ax.barh(y - 0.2, bars["prob_clean"][0], height=0.4, label="clean", color="#4c72b0")
    ax.barh(y + 0.2, bars["prob"][0], height=0.4, label="stressed", color="#dd8452")
    for col, dy in (("prob_clean", -0.2), ("prob", 0.2)):
        for yy in y[bars[col][1]]:
            ax.text(0.01, yy + dy, "n/a", fontsize=6, va="center")
    for yy, lab in zip(y, probs["label"], strict=True):
        ax.text(1.02, yy, "label 1" if lab == 1 else "label 0", fontsize=7, va="center")
    ax.set_yticks(y, [str(t) for t in probs["target"]], fontsize=7.5)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.set_xlabel("probability", fontsize=8)
    _legend(ax, fontsize=7, loc="lower right")
    return _save(fig, path)


def embedding_map_plot(features: pd.DataFrame, path: Path, error_label: str,
                       highlight: np.ndarray | None = None,
                       highlight_label: str = "") -> Path | None:
    """Every test sample at its two leading embedding components (``emb.pc1``, ``emb.pc2`` of
    ``discovery_features.parquet``), coloured by its error; ``highlight`` (boolean per row)
    outlines samples in red (the confirm-half members of the top confirmed slice).

    None (nothing written) when the table has no embedding columns or no finite point."""
    if features is None or not {"emb.pc1", "emb.pc2"} <= set(features.columns):
        return None
    x, y = num(features["emb.pc1"]), num(features["emb.pc2"])
    err = num(features["error"]) if "error" in features else np.full(len(x), np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=110)
    colored = ok & np.isfinite(err)
    if colored.any():
        sc = ax.scatter(x[colored], y[colored], c=err[colored], cmap="viridis", s=14,
                        linewidths=0, zorder=2)
        bar = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(error_label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if (ok & ~colored).any():
        ax.scatter(x[ok & ~colored], y[ok & ~colored], s=14, color="#bbbbbb", zorder=2,
                   label="error n/a")
    if highlight is not None:
        mark = ok & np.asarray(highlight, bool)
        if mark.any():
            ax.scatter(x[mark], y[mark], s=46, facecolors="none", edgecolors="#b00020",
                       linewidths=1.1, zorder=3, label=highlight_label or "highlighted")
    ax.set_xlabel("embedding component 1 (standardised)", fontsize=8)
    ax.set_ylabel("embedding component 2", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("embedding map: every test sample, colour = error", fontsize=8)
    _legend(ax, fontsize=6.5, loc="best")
    return _save(fig, path, [_skipped_note(int((~ok).sum()), "point")])


def thumbnail_grid(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], path: Path,
                   title: str = "", size: float = 0.95) -> Path:
    """Small grey thumbnails (uint8, 2D or HWC), one row per group: ``(row label, [(image,
    caption), ...])``; each thumbnail is titled with its caption (the sample id)."""
    n_cols = max((len(items) for _, items in rows), default=0)
    if not rows or n_cols == 0:
        return placeholder_figure(path, title, "no thumbnail stored for these samples")
    fig, axes = plt.subplots(len(rows), n_cols, squeeze=False, dpi=110,
                             figsize=(size * n_cols + 0.2, (size + 0.3) * len(rows)
                                      + (0.2 if title else 0)))
    for r, (label, items) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.set_axis_off()
                continue
            image, caption = items[c]
            ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
            ax.set_title(caption, fontsize=5.5)
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if c == 0 and label:
                ax.set_ylabel(label, fontsize=5.5)
    if title:
        fig.suptitle(title, fontsize=7)
    return _save(fig, path)
