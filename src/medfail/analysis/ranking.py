"""What breaks the model: conditions and slices ranked by their effect on the primary metric.

Primary metric: ``auroc`` for classification, ``dice`` for segmentation (``macro`` target when
there are several). Conditions are ranked by Δ vs clean (paired bootstrap CI), slices by their gap
to the whole set on clean images (paired CI). ``significant`` = the 95 % interval of the effect lies
entirely on the harmful side of 0. Worst first.
"""

from __future__ import annotations

import pandas as pd

from medfail.analysis.aggregate import ALL, LOWER_IS_BETTER, MACRO, harmful_side
from medfail.slices.definitions import GT, META, parse_slice

STRESS_FAMILIES = ("corruption", "domain_shift", "prompt")
PRIMARY_METRIC = {"classification": "auroc", "segmentation": "dice", "promptable": "dice"}
RANK_COLUMNS = ["rank", "kind", "name", "family", "test", "severity", "metric", "target",
                "value", "reference", "effect", "effect_ci_low", "effect_ci_high",
                "significant", "n", "small_slice"]


def primary_target(metrics: pd.DataFrame, metric: str) -> str:
    targets = list(dict.fromkeys(metrics.loc[metrics["metric"] == metric, "target"]))
    return MACRO if MACRO in targets else (targets[0] if targets else "")


def breaking_table(metrics: pd.DataFrame, task: str, metric: str | None = None) -> pd.DataFrame:
    """Ranked table of conditions (Δ vs clean) and clean-image slices (gap vs all)."""
    metric = metric or PRIMARY_METRIC[task]
    target = primary_target(metrics, metric)
    m = metrics[(metrics["metric"] == metric) & (metrics["target"] == target)]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rows = []
    conds = m[(m["slice"] == ALL) & (m["condition"] != "clean")
              & m["family"].isin(STRESS_FAMILIES)]
    for r in conds.itertuples():
        rows.append({"kind": "condition", "name": r.condition, "family": r.family,
                     "test": r.test, "severity": r.severity, "value": r.value,
                     "reference": r.value - r.delta_vs_clean, "effect": r.delta_vs_clean,
                     "effect_ci_low": r.delta_ci_low, "effect_ci_high": r.delta_ci_high,
                     "n": r.n, "small_slice": False})
    slices = m[(m["slice"] != ALL) & (m["condition"] == "clean")]
    for r in slices.itertuples():
        rows.append({"kind": "slice", "name": r.slice, "family": "slice",
                     "test": r.slice.split("=")[0], "severity": 0, "value": r.value,
                     "reference": r.value - r.gap_vs_all, "effect": r.gap_vs_all,
                     "effect_ci_low": r.gap_ci_low, "effect_ci_high": r.gap_ci_high,
                     "n": r.n, "small_slice": bool(r.small_slice)})
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=RANK_COLUMNS)
    out["metric"], out["target"] = metric, target
    out["significant"] = harmful_side(metric, out["effect_ci_low"], out["effect_ci_high"])
    out = out.assign(_key=sign * out["effect"]).sort_values(["_key", "name"]).drop(columns="_key")
    out["rank"] = range(1, len(out) + 1)
    return out[RANK_COLUMNS].reset_index(drop=True)


def _pretty(name: str) -> str:
    if "@" in name:
        test, sev = name.split("@")
        return f"{test.replace('_', ' ')} (severity {sev})"
    if name == "shift_data":
        return "the second site's data"
    source, key, value = parse_slice(name)
    if source in (GT, META):  # "GT size: small", "metadata site: B"
        return f"{'GT' if source == GT else 'metadata'} {key.replace('_', ' ')}: {value}"
    return name.replace("=", ": ").replace("_", " ")


def breaking_sentence(ranking: pd.DataFrame, top: int = 3) -> str:
    """A sentence a clinician can read, naming the top significant failures."""
    if ranking.empty:
        return "No stress condition or slice was evaluated."
    metric, target = ranking["metric"].iloc[0], ranking["target"].iloc[0]
    sig = ranking[ranking["significant"]]
    if sig.empty:
        return (f"No stress condition or slice lowered {metric} significantly "
                f"(paired 95% bootstrap intervals).")
    parts = []
    ordered = pd.concat([sig[~sig["small_slice"]], sig[sig["small_slice"]]])
    for r in ordered.head(top).itertuples():
        where = "on" if r.kind == "slice" else "under"
        flag = ", few cases" if r.small_slice else ""
        parts.append(f"{where} {_pretty(r.name)} ({metric} {r.reference:.2f} → {r.value:.2f}"
                     f"{flag})")
    n_cond = int((sig["kind"] == "condition").sum())
    n_slice = int((sig["kind"] == "slice").sum())
    label = f"{metric}" + ("" if target in ("macro", "") else f" for {target}")
    return (f"The model fails most {'; '.join(parts)}. In total {n_cond} stress conditions and "
            f"{n_slice} patient/lesion subgroups lower {label} significantly.")
