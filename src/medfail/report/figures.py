"""Figures for the report, drawn from ``metrics.parquet`` only (never from a model)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medfail.analysis.aggregate import LOWER_IS_BETTER
from medfail.stress import registry


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def degradation_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path,
                     family: str | None = None, title: str | None = None) -> Path:
    """Metric vs severity, one line per stress test, 95 % CI as a band; clean at severity 0."""
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    tests = m[(m["severity"] > 0) & (m["test"] != "shift_data")]
    if family is not None:
        tests = tests[tests["family"] == family]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    for test, grp in tests.groupby("test", sort=True):
        grp = pd.concat([clean, grp]).sort_values("severity")
        line, = ax.plot(grp["severity"], grp["value"], marker="o", label=test)
        ax.fill_between(grp["severity"], grp["ci_low"], grp["ci_high"], alpha=0.12,
                        color=line.get_color())
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel(f"{metric} ({target})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, loc="best", ncol=2)
    ax.set_title(title or f"{metric} under {family or 'stress'}, 95% bootstrap CI", fontsize=9)
    return _save(fig, path)


def prompt_sensitivity_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """One panel per prompt test: metric vs perturbation size (the severity's parameter)."""
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["slice"] == "all")]
    clean = m[m["condition"] == "clean"]
    tests = sorted(m.loc[m["family"] == "prompt", "test"].unique())
    cols = 3
    rows = max(1, int(np.ceil(len(tests) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(8.4, 2.3 * rows), dpi=110, squeeze=False)
    for ax, test in zip(axes.ravel(), tests, strict=False):
        spec = registry.get(test)
        (param, _), = spec.severities[0].items()
        grp = pd.concat([clean, m[m["test"] == test]]).sort_values("severity")
        x = [0.0] + [float(spec.severities[s - 1][param]) for s in grp["severity"] if s > 0]
        ax.errorbar(x, grp["value"], yerr=[grp["value"] - grp["ci_low"],
                                           grp["ci_high"] - grp["value"]],
                    marker="o", capsize=3)
        ax.set_title(test, fontsize=8)
        ax.set_xlabel(param, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(tests):]:
        ax.axis("off")
    fig.suptitle(f"prompt sensitivity: {metric} vs perturbation size (95% CI)", fontsize=9)
    return _save(fig, path)


def slice_forest_plot(metrics: pd.DataFrame, metric: str, target: str, path: Path,
                      condition: str = "clean") -> Path:
    """Slice values with 95 % CIs against the whole-set value; flagged small slices in grey."""
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)
                & (metrics["condition"] == condition)]
    whole = m[m["slice"] == "all"]
    sl = m[m["slice"] != "all"].sort_values("slice", ascending=False)
    fig, ax = plt.subplots(figsize=(5.6, 0.28 * len(sl) + 1.2), dpi=110)
    y = np.arange(len(sl))
    sig = (sl["gap_ci_high"] < 0).to_numpy() if metric not in LOWER_IS_BETTER else (
        sl["gap_ci_low"] > 0).to_numpy()
    colors = np.where(sl["small_slice"].to_numpy(), "#999999",
                      np.where(sig, "#b00020", "#1f5fa8"))
    for yi, r, color in zip(y, sl.itertuples(), colors, strict=True):
        ax.errorbar([r.value], [yi], xerr=[[r.value - r.ci_low], [r.ci_high - r.value]],
                    fmt="none", ecolor=color, capsize=2)
    ax.scatter(sl["value"], y, c=colors, zorder=3, s=14)
    if len(whole):
        ax.axvline(float(whole["value"].iloc[0]), color="k", lw=1, ls="--", label="all")
    ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(sl["slice"], sl["n"], strict=True)],
                  fontsize=7)
    ax.set_xlabel(f"{metric} ({target}), {condition}")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("slices: red = significantly worse than the whole set, grey = few cases",
                 fontsize=8)
    return _save(fig, path)


def reliability_plot(y: np.ndarray, probs: dict[str, np.ndarray], path: Path,
                     title: str) -> Path:
    """Reliability diagrams, equal-width and equal-mass bins, one line per method, with counts."""
    from medfail.metrics.calibration import reliability_bins

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=110)
    for ax, strategy in zip(axes, ("uniform", "quantile"), strict=True):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect")
        for method, p in probs.items():
            rb = reliability_bins(y, p, n_bins=10, strategy=strategy)
            ok = rb.counts > 0
            line, = ax.plot(rb.mean_confidence[ok], rb.frequency[ok], marker="o",
                            label=f"{method} (ECE {rb.ece:.3f})")
            if method == next(iter(probs)):
                for x, f, c in zip(rb.mean_confidence[ok], rb.frequency[ok], rb.counts[ok],
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
    return _save(fig, path)


def risk_coverage_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                       title: str) -> Path:
    """Selective risk vs coverage, one line per curve."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    for name, (coverage, risk) in curves.items():
        ax.plot(coverage, risk, label=name)
    ax.axvline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("coverage (fraction of cases the model keeps)")
    ax.set_ylabel("risk (error rate of kept cases)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def calibration_drift_plot(table: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """A calibration metric vs severity per stress test (max_prob and temperature)."""
    t = table[(table["metric"] == metric) & (table["target"] == target)]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    stress = t["family"].isin(("corruption", "domain_shift", "prompt"))
    for method, style in (("max_prob", "-"), ("temperature", "--")):
        m = t[t["method"] == method]
        clean = m[m["condition"] == "clean"]
        for i, (test, grp) in enumerate(m[(m["severity"] > 0) & stress[m.index]
                                          & (m["test"] != "shift_data")]
                                        .groupby("test", sort=True)):
            grp = pd.concat([clean, grp]).sort_values("severity")
            ax.plot(grp["severity"], grp["value"], style, marker="o", ms=3,
                    color=f"C{i % 10}", label=test if method == "max_prob" else None)
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    scaled = (t["method"] == "temperature").any()
    ax.set_xlabel("severity" + (" (solid: raw, dashed: temperature-scaled)" if scaled else ""))
    ax.set_ylabel(f"{metric} ({target})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    ax.set_title(f"calibration drift under stress: {metric}", fontsize=9)
    return _save(fig, path)


def binned_reliability_plot(tables: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Per-pixel reliability from binned sums (count, sum_prob, sum_label), one line per table."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect")
    for name, t in tables.items():
        ok = t["count"] > 0
        conf = t.loc[ok, "sum_prob"] / t.loc[ok, "count"]
        freq = t.loc[ok, "sum_label"] / t.loc[ok, "count"]
        ax.plot(conf, freq, marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted foreground probability (pixels)")
    ax.set_ylabel("observed foreground frequency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def compare_plot(table: pd.DataFrame, metric: str, target: str, path: Path) -> Path:
    """Δ (B − A) per condition with paired 95 % CIs, sorted."""
    t = table.sort_values("delta")
    fig, ax = plt.subplots(figsize=(5.6, 0.22 * len(t) + 1.2), dpi=110)
    y = np.arange(len(t))
    err = np.vstack([(t["delta"] - t["ci_low"]).fillna(0), (t["ci_high"] - t["delta"]).fillna(0)])
    ax.errorbar(t["delta"], y, xerr=err, fmt="o", ms=3, capsize=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, t["condition"], fontsize=6.5)
    ax.set_xlabel(f"Δ {metric} ({target}), B − A")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _gray(image: np.ndarray, value_range: np.ndarray) -> np.ndarray:
    lo, hi = float(value_range[0]), float(value_range[1])
    x = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    return np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def segmentation_case_figure(case: dict[str, np.ndarray], path: Path) -> Path:
    """Input with GT contour, clean and stressed probability overlays, and the entropy map."""
    img, clean = _gray(case["image"], case["value_range"]), _gray(case["clean"],
                                                                   case["value_range"])
    gt = np.asarray(case["mask"]) == 1
    p = case["prob"][0].astype(np.float32)
    p_clean = case["prob_clean"][0].astype(np.float32)
    eps = 1e-6
    entropy = -(p * np.log2(p + eps) + (1 - p) * np.log2(1 - p + eps))
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
            ax.contour(over, levels=[0.5], colors="red", linewidths=0.8)
        if k < 3 and gt.any():
            ax.contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        if k == 0 and p_clean.max() >= 0.5:
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
        lim = max(float(np.abs(s).max()), 1e-6)
        ax.imshow(s, cmap="coolwarm", alpha=0.45, vmin=-lim, vmax=lim,
                  extent=(-0.5, base.shape[1] - 0.5, base.shape[0] - 0.5, -0.5),
                  interpolation="nearest")
        ax.set_title(f"{label}; occlusion saliency for {target}\n(red = supports it)",
                     fontsize=7.5)
        ax.set_axis_off()
    ax = axes[2]
    y = np.arange(len(probs))
    ax.barh(y - 0.2, probs["prob_clean"], height=0.4, label="clean", color="#4c72b0")
    ax.barh(y + 0.2, probs["prob"], height=0.4, label="stressed", color="#dd8452")
    for yy, lab in zip(y, probs["label"], strict=True):
        ax.text(1.02, yy, "label 1" if lab else "label 0", fontsize=7, va="center")
    ax.set_yticks(y, probs["target"], fontsize=7.5)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.set_xlabel("probability", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
