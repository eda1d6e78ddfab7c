"""Slice discovery: high-error groups nobody named, found on one half and confirmed on the other.

Every other slice of a run is named in advance (a metadata column, a ground-truth rule). This
module searches for the ones nobody named, from the run directory alone:

1. **Error per test sample and target** (clean condition): segmentation ``1 − Dice`` of each
   foreground target; multi-label classification the misclassification of each target at the
   run's decision threshold, ``1[(p ≥ τ_target) ≠ y]`` (``run.json: thresholds``); multi-class
   one error (target ``all``), ``1[argmax p ≠ true class]``. Higher is worse, in [0, 1]. Each
   target is searched on its own (a shortcut for one finding is diluted in an average over
   findings); all targets' candidates are confirmed as one family. (The log loss was tried
   first: its unbounded per-sample values, up to 14 for a confident mistake, left the held-out
   gaps too noisy to confirm on the demo's 48 held-out images.)
2. **Features** (categorical, one column each; missing values are ``"missing"``): every stored
   slice column (``gt.size``, ``meta.site``...: ``slices.parquet``), the clean input-quality
   features of ``evidence.parquet`` cut into tertiles (``quality.<feature>`` = low/mid/high, by
   the 1/3 and 2/3 quantiles of all test samples), a confidence tertile (``conf.level``:
   classification mean over targets of ``max(p, 1 − p)``, multi-class ``max p``; segmentation
   the stored ``mask_confidence`` of the first target), the labels (classification:
   ``label.<target>`` = 0/1, multi-class ``label`` = the class) and the embedding group
   (``emb.group``, step 3).
3. **Embedding groups**: the stored penultimate features (``predictions/embeddings.npz``) are
   reduced by PCA (fitted on all test samples, at most :data:`PCA_DIMS` components, each
   standardised) and clustered by a diagonal Gaussian mixture (``k = round(n / 32)`` between 2
   and :data:`MAX_GROUPS`, :data:`N_INIT` initialisations, seeded), groups named ``g1``,
   ``g2``... by size.
   The clustering never sees an error, so both halves may use it; SliceLine (step 4) picks the
   groups (alone or with a label, site, quality...) where the error is high. A Domino-style
   mixture over embeddings *and* error was tried first: its error-shaped groups did not
   transfer to the held-out half (on the demo a 10-sample discovery group got 1 held-out
   member), so it is not used. Each group is described by the features over-represented in it
   (lift = share in group / share overall).
4. **Search**, per target, on the discovery half with SliceLine (Sagadeeva & Boehm, SIGMOD
   2021; the ``sliceline`` package): conjunctions of up to :data:`MAX_LEVEL` predicates, score
   weight ``alpha`` = :data:`ALPHA`, minimum support ``max(5, 10 % of the half)``, top
   :data:`TOP_K` slices (a slice holding the same discovery-half samples as a better-ranked one
   is dropped); the target's highest-error embedding group joins them when SliceLine did not
   return it: for classification the highest-error *cell* of group × the target's label
   (``emb.group=g1 & label.effusion=0``: SliceLine never extends a predicate whose own error is
   below average, and a shortcut's errors sit in one label value per group), with at least the
   minimum support on the discovery half.
5. **Confirmation** on the other half: for each of the ``m`` candidates (all targets), gap =
   mean error of its target in the slice − mean error outside it, with a percentile bootstrap
   CI (in and out resampled separately, ``n_bootstrap`` draws, seed
   ``derive_seed(seed, "discovery", target, slice)``) at level ``1 − 0.05 / m`` (Bonferroni:
   the family of all candidates is tested at 5 %). A slice is **confirmed** when that CI's
   lower end is above 0 and it has ≥ :data:`MIN_SIDE` (5) held-out samples on each side (a
   percentile bootstrap of fewer is not trustworthy). Samples whose error is undefined
   (NaN) are left out of that target's search and gap.

Halves: the test ids are permuted by ``numpy.random.default_rng(derive_seed(seed, "discovery",
"halves"))`` (ids sorted first); the first ``ceil(n / 2)`` are the discovery half.
The discovery-half figures of a slice are biased upwards (it was chosen for them); only the
confirm-half gap is evidence.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfail import rundir
from medfail.errors import MedfailInputError
from medfail.rundir import read_table
from medfail.seeding import derive_seed

DISCOVER, CONFIRM = "discover", "confirm"
CLEAN = "clean"
MAX_LEVEL = 2
ALPHA = 0.95
TOP_K = 5
PCA_DIMS = 8
FWER = 0.05
MISSING = "missing"
EMB_GROUP = "emb.group"
#: the decision threshold of a target ``thresholds`` does not name (the suite's default)
DEFAULT_THRESHOLD = 0.5
#: the error "target" of multi-class classifiers (one misclassification over the classes)
ALL_TARGETS = "all"
MIN_SIDE = 5
#: embedding groups: about this many test samples per group, at most MAX_GROUPS groups
SAMPLES_PER_GROUP = 32
MAX_GROUPS = 8
#: mixture initialisations (EM from one k-means start often stops at a poor local optimum)
N_INIT = 10
#: discovery.parquet's columns
COLUMNS = ["rank", "target", "slice", "source", "n_predicates", "description", "score",
           "n_discover", "error_discover", "gap_discover", "n_confirm", "error_confirm",
           "error_rest", "gap", "ci_low", "ci_high", "ci_level", "confirmed"]


def classification_errors(preds: pd.DataFrame, multi_label: bool,
                          thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Per-sample misclassification (module docstring) from a long predictions table
    (``id, target, prob, label``): multi-label one 0/1 column per target,
    ``1[(p ≥ thresholds[target]) ≠ y]`` (a target without a threshold: 0.5); multi-class one
    column :data:`ALL_TARGETS`, ``1[argmax p ≠ true class]`` (ties: the first target in table
    order). Indexed by id."""
    frame = preds.assign(id=preds["id"].astype(str), target=preds["target"].astype(str))
    targets = list(dict.fromkeys(frame["target"]))
    if multi_label:
        cut = frame["target"].map({str(k): float(v) for k, v in thresholds.items()}).fillna(
            DEFAULT_THRESHOLD)
        wrong = (frame["prob"].to_numpy(np.float64) >= cut.to_numpy(np.float64)) != (
            frame["label"].to_numpy(np.float64) > 0.5)
        wide = frame.assign(wrong=wrong.astype(float)).pivot_table(
            index="id", columns="target", values="wrong", aggfunc="first")[targets]
    else:
        probs = frame.pivot_table(index="id", columns="target", values="prob",
                                  aggfunc="first")[targets]
        labels = frame.pivot_table(index="id", columns="target", values="label",
                                   aggfunc="first")[targets]
        wrong = probs.to_numpy().argmax(1) != labels.to_numpy().argmax(1)
        wide = pd.DataFrame({ALL_TARGETS: wrong.astype(float)}, index=probs.index)
    wide.columns.name = None
    return wide.sort_index()


def segmentation_errors(per_sample: pd.DataFrame, condition: str = "clean") -> pd.DataFrame:
    """``1 − dice`` per sample of ``condition``, one column per foreground target; indexed
    by id."""
    rows = per_sample[(per_sample["condition"] == condition) & (per_sample["metric"] == "dice")]
    rows = rows.assign(id=rows["id"].astype(str), target=rows["target"].astype(str))
    wide = 1.0 - rows.pivot_table(index="id", columns="target", values="value",
                                  aggfunc="first")
    wide = wide[list(dict.fromkeys(rows["target"]))]
    wide.columns.name = None
    return wide.sort_index()


def error_column(target: str) -> str:
    """The column of ``discovery_features.parquet`` holding ``target``'s error."""
    return f"error.{target}"


def split_halves(ids: Sequence[str], seed: int) -> pd.Series:
    """``discover`` / ``confirm`` per id (module docstring), indexed by id."""
    ordered = sorted(str(i) for i in ids)
    perm = np.random.default_rng(derive_seed(seed, "discovery", "halves")).permutation(
        len(ordered))
    n_disc = math.ceil(len(ordered) / 2)
    half = np.where(np.argsort(perm) < n_disc, DISCOVER, CONFIRM)
    return pd.Series(half, index=pd.Index(ordered, name="id"), name="half")


def tertiles(values: pd.Series) -> pd.Series:
    """``low`` / ``mid`` / ``high`` by the 1/3 and 2/3 quantiles (≤ q1 low, > q2 high);
    NaN → missing; a constant feature is all ``mid``."""
    v = pd.to_numeric(values, errors="coerce")
    q1, q2 = v.quantile([1 / 3, 2 / 3])
    out = pd.Series(np.where(v <= q1, "low", np.where(v > q2, "high", "mid")), index=v.index)
    if q1 == q2 == v.min() == v.max():
        out[:] = "mid"
    return out.where(v.notna(), MISSING)


def slice_columns(membership: pd.DataFrame) -> pd.DataFrame:
    """``slices.parquet`` (``id, slice`` = ``source.key=value``) as one column per
    ``source.key`` (first value when a sample has several); indexed by id."""
    named = membership[membership["slice"].astype(str).str.contains("=", regex=False)]
    if named.empty:
        return pd.DataFrame(index=pd.Index([], name="id"))
    parts = named["slice"].astype(str).str.split("=", n=1, expand=True)
    frame = pd.DataFrame({"id": named["id"].astype(str).to_numpy(),
                          "column": parts[0].to_numpy(), "value": parts[1].to_numpy()})
    return frame.drop_duplicates(["id", "column"]).pivot(index="id", columns="column",
                                                         values="value")


@dataclass
class EmbeddingGroups:
    """Group per id, the 2 leading standardised components (for the figure) and the
    number of groups."""

    group: pd.Series
    pcs: pd.DataFrame
    k: int


def embedding_groups(ids: Sequence[str], features: np.ndarray,
                     seed: int) -> EmbeddingGroups | None:
    """Groups of samples the model sees alike (module docstring, step 3): error-blind, so
    either half may use them; None with fewer than 8 samples or a constant embedding."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    ids = [str(i) for i in ids]
    x = np.asarray(features, np.float64)
    d = min(PCA_DIMS, x.shape[1], len(ids) - 1)
    if len(ids) < 8 or d < 1 or not np.isfinite(x).all() or np.allclose(x.std(0), 0):
        return None
    pcs = PCA(n_components=d, random_state=0).fit_transform(x)
    sd = pcs.std(0)
    pcs = pcs[:, sd > 1e-12] / sd[sd > 1e-12]
    if pcs.shape[1] == 0:
        return None
    k = int(np.clip(round(len(ids) / SAMPLES_PER_GROUP), 2, MAX_GROUPS))
    gmm = GaussianMixture(n_components=k, covariance_type="diag", random_state=seed % 2**32,
                          n_init=N_INIT, reg_covar=1e-3)
    group = gmm.fit_predict(pcs)
    sizes = pd.Series(group).value_counts()
    order = {g: i + 1 for i, g in enumerate(sorted(sizes.index, key=lambda g: (-sizes[g], g)))}
    labels = pd.Series([f"g{order[g]}" for g in group], index=pd.Index(ids, name="id"))
    lead = pd.DataFrame(pcs[:, :2], index=labels.index,
                        columns=[f"emb.pc{i + 1}" for i in range(min(2, pcs.shape[1]))])
    return EmbeddingGroups(labels, lead, len(order))


def feature_table(membership: pd.DataFrame, quality: pd.DataFrame | None,
                  confidence: pd.Series | None, labels: pd.DataFrame | None,
                  groups: EmbeddingGroups | None, ids: Sequence[str]) -> pd.DataFrame:
    """The categorical features of step 2 for ``ids`` (one column each; index id).
    ``quality``: index id, one numeric column per input-quality feature; ``confidence``:
    numeric per id; ``labels``: index id, columns ``label.<target>``; ``groups``: the
    embedding groups (column ``emb.group``)."""
    index = pd.Index([str(i) for i in ids], name="id")
    parts = [slice_columns(membership).reindex(index)]
    if quality is not None:
        parts.append(pd.DataFrame({f"quality.{c}": tertiles(quality[c].reindex(index))
                                   for c in quality.columns}, index=index))
    if confidence is not None:
        parts.append(pd.DataFrame({"conf.level": tertiles(confidence.reindex(index))}))
    if labels is not None:
        parts.append(labels.reindex(index).astype("string"))
    if groups is not None:
        parts.append(pd.DataFrame({EMB_GROUP: groups.group.reindex(index)}))
    out = pd.concat(parts, axis=1).astype(object)
    out = out.where(out.notna(), MISSING).astype(str)
    keep = [c for c in out.columns if out[c].nunique() > 1]  # a constant column slices nothing
    return out[sorted(keep)]


def members(features: pd.DataFrame, predicates: Mapping[str, str]) -> np.ndarray:
    """Boolean membership of the conjunction ``column = value`` for every predicate."""
    mask = np.ones(len(features), bool)
    for col, val in predicates.items():
        mask &= (features[col] == val).to_numpy()
    return mask


def slice_name(predicates: Mapping[str, str]) -> str:
    """``col=value & col=value`` (columns sorted)."""
    return " & ".join(f"{c}={predicates[c]}" for c in sorted(predicates))


def sliceline_candidates(features: pd.DataFrame, errors: np.ndarray,
                         k: int = TOP_K) -> list[tuple[dict[str, str], float]]:
    """SliceLine's top-``k`` slices of ``features`` by ``errors`` (step 4): (predicates,
    score) pairs, best first; none when every error is equal or no feature varies."""
    from sliceline import Slicefinder

    if features.shape[1] == 0 or len(features) < 10 or np.ptp(errors) <= 0:
        return []
    min_sup = min_support(len(features))
    finder = Slicefinder(alpha=ALPHA, k=k, max_l=MAX_LEVEL, min_sup=min_sup, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            finder.fit(features.to_numpy(dtype=object), errors)
        except (ValueError, IndexError):  # no slice reaches the support
            return []
    out = []
    for row, stats in zip(finder.top_slices_, finder.top_slices_statistics_, strict=True):
        preds = {str(c): str(v) for c, v in zip(features.columns, row, strict=True)
                 if v is not None}
        if preds:
            out.append((preds, float(stats["slice_score"])))
    return out[:k]


def gap_interval(inside: np.ndarray, outside: np.ndarray, n_boot: int, level: float,
                 seed: int) -> tuple[float, float, float]:
    """``mean(inside) − mean(outside)`` and its percentile bootstrap CI at ``level``
    (each side resampled with replacement separately)."""
    rng = np.random.default_rng(seed)
    gap = float(inside.mean() - outside.mean())
    a = inside[rng.integers(0, len(inside), (n_boot, len(inside)))].mean(1)
    b = outside[rng.integers(0, len(outside), (n_boot, len(outside)))].mean(1)
    lo, hi = np.quantile(a - b, [(1 - level) / 2, 1 - (1 - level) / 2])
    return gap, float(lo), float(hi)


def describe_group(features: pd.DataFrame, column: str, group: str, top: int = 3) -> str:
    """The features over-represented in embedding group ``column = group``: ``col=value``
    with its share in the group vs overall, by lift, at most ``top`` (support ≥ 3 in the
    group; lift > 1.2)."""
    if column not in features:
        return ""
    inside = (features[column] == group).to_numpy()
    if not inside.any():
        return ""
    rows = []
    for col in features.columns:
        if col.startswith(EMB_GROUP):
            continue
        for val, n_in in features.loc[inside, col].value_counts().items():
            if val == MISSING or n_in < 3:
                continue
            share_in = n_in / inside.sum()
            share_all = float((features[col] == val).mean())
            rows.append((share_in / share_all, f"{col}={val} ({share_in:.0%} vs {share_all:.0%})"))
    rows.sort(key=lambda r: -r[0])
    return "; ".join(text for lift, text in rows[:top] if lift > 1.2)


def target_candidates(features: pd.DataFrame, err: np.ndarray, disc: np.ndarray,
                      group: str | None, label: str | None = None,
                      ) -> list[tuple[dict[str, str], float, str]]:
    """One target's candidates on the discovery half: SliceLine's (duplicates by
    discovery-half membership dropped) and the highest-error embedding group (within one
    value of the target's ``label`` column when given: :func:`worst_cell`)."""
    out: list[tuple[dict[str, str], float, str]] = []
    seen: set[bytes] = set()
    for preds, score in sliceline_candidates(features[disc], err[disc]):
        key = np.packbits(members(features[disc], preds)).tobytes()
        if key not in seen:  # the same discovery-half samples as a better-ranked slice
            seen.add(key)
            out.append((preds, score, "sliceline"))
    if group is not None and group in features:
        worst = worst_cell(features, err, disc, [group, *([label] if label else [])])
        if worst and all(p != worst for p, _, _ in out):
            out.append((worst, float("nan"), "embedding_group"))
    return out


def worst_cell(features: pd.DataFrame, err: np.ndarray, disc: np.ndarray,
               columns: Sequence[str]) -> dict[str, str] | None:
    """The combination of ``columns``' values with the highest mean discovery-half error
    among those with at least ``min_support`` discovery-half samples (None if none has)."""
    if not disc.any():
        return None
    cells = features.loc[disc, list(columns)].astype(str).agg("\x1f".join, axis=1)
    stats = pd.Series(err[disc], index=cells.index).groupby(cells.to_numpy()).agg(
        ["mean", "count"])
    stats = stats[stats["count"] >= min_support(int(disc.sum()))]
    if stats.empty:
        return None
    best = str(stats["mean"].idxmax()).split("\x1f")
    return dict(zip(columns, best, strict=True))


def min_support(n: int) -> int:
    """SliceLine's minimum slice size on a discovery half of ``n``: max(5, 10 % of n)."""
    return max(5, math.ceil(0.1 * n))


def discover(features: pd.DataFrame, errors: pd.Series | pd.DataFrame, halves: pd.Series,
             n_boot: int, seed: int) -> pd.DataFrame:
    """Steps 4 and 5: each target's candidates on the discovery half (``errors``: one column
    per target, or a Series = one target named by its ``name`` or :data:`ALL_TARGETS`), all
    confirmed together on the other half with one Bonferroni family
    (``discovery.parquet``; columns :data:`COLUMNS`)."""
    if isinstance(errors, pd.Series):
        errors = errors.to_frame(str(errors.name) if errors.name is not None else ALL_TARGETS)
    ids = features.index
    half = halves.reindex(ids).to_numpy()
    disc, conf = half == DISCOVER, half == CONFIRM
    group = EMB_GROUP if EMB_GROUP in features else None
    found: list[tuple[str, dict[str, str], float, str]] = []
    for target in errors.columns:
        err = errors[target].reindex(ids).to_numpy(np.float64)
        label = next((c for c in (f"label.{target}", "label") if c in features), None)
        found += [(str(target), p, s, src) for p, s, src in
                  target_candidates(features, err, disc & np.isfinite(err), group, label)]
    m = max(len(found), 1)
    level = 1 - FWER / m
    rows = []
    for rank, (target, preds, score, source) in enumerate(found, start=1):
        err = errors[target].reindex(ids).to_numpy(np.float64)
        inside = members(features, preds)
        ok = np.isfinite(err)
        d_in, d_out = err[ok & disc & inside], err[ok & disc & ~inside]
        c_in, c_out = err[ok & conf & inside], err[ok & conf & ~inside]
        name = slice_name(preds)
        gap = lo = hi = float("nan")
        if len(c_in) >= MIN_SIDE and len(c_out) >= MIN_SIDE:
            gap, lo, hi = gap_interval(c_in, c_out, n_boot, level,
                                       derive_seed(seed, "discovery", target, name))
        description = " and ".join(
            f"{c}={v}" + (f" [{describe_group(features, c, v)}]" if c.startswith(EMB_GROUP)
                          else "") for c, v in sorted(preds.items()))
        rows.append({
            "rank": rank, "target": target, "slice": name, "source": source,
            "n_predicates": len(preds), "description": description, "score": score,
            "n_discover": len(d_in),
            "error_discover": float(d_in.mean()) if len(d_in) else float("nan"),
            "gap_discover": float(d_in.mean() - d_out.mean()) if len(d_in) and len(d_out)
            else float("nan"),
            "n_confirm": len(c_in),
            "error_confirm": float(c_in.mean()) if len(c_in) else float("nan"),
            "error_rest": float(c_out.mean()) if len(c_out) else float("nan"),
            "gap": gap, "ci_low": lo, "ci_high": hi, "ci_level": level,
            "confirmed": bool(np.isfinite(lo) and lo > 0)})
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------------
# From the run directory


def _clean_quality(run_dir: Path) -> pd.DataFrame | None:
    """Input-quality features of the clean test images (``predictions/clean.evidence.parquet``,
    written by the predict stage), one column per feature; None when absent."""
    from medfail.analysis.input_quality import FEATURES

    path = rundir.condition_file(run_dir, CLEAN, ".evidence.parquet")
    if not path.exists():
        return None
    rows = read_table(path)
    rows = rows[rows["feature"].isin(FEATURES)]
    if rows.empty:
        return None
    return rows.assign(id=rows["id"].astype(str)).pivot_table(
        index="id", columns="feature", values="value", aggfunc="first")


def _confidence(run_dir: Path, task: str, preds: pd.DataFrame | None,
                multi_label: bool) -> pd.Series | None:
    """Per-sample confidence (module docstring, step 2)."""
    if task == "classification":
        assert preds is not None
        p = preds["prob"].astype(float)
        conf = np.maximum(p, 1 - p) if multi_label else p
        frame = preds.assign(id=preds["id"].astype(str), conf=conf)
        return frame.groupby("id")["conf"].mean() if multi_label \
            else frame.groupby("id")["conf"].max()
    path = rundir.condition_file(run_dir, CLEAN, ".confidence.parquet")
    if not path.exists():
        return None
    conf = read_table(path)
    conf = conf[conf["signal"] == "mask_confidence"]
    if conf.empty:
        return None
    first = conf["target"].iloc[0]
    conf = conf[conf["target"] == first]
    return conf.assign(id=conf["id"].astype(str)).set_index("id")["value"].astype(float)


def _labels(preds: pd.DataFrame, multi_label: bool) -> pd.DataFrame:
    frame = preds.assign(id=preds["id"].astype(str))
    if multi_label:
        wide = frame.pivot_table(index="id", columns="target", values="label", aggfunc="first")
        return wide.astype(int).rename(columns=lambda t: f"label.{t}")
    true = frame[frame["label"] > 0.5].drop_duplicates("id").set_index("id")["target"]
    return pd.DataFrame({"label": true.astype(str)})


def read_embeddings(run_dir: Path) -> tuple[list[str], np.ndarray] | None:
    """``predictions/embeddings.npz`` as (ids, features), or None when the run has none."""
    path = rundir.embeddings_path(run_dir)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return [str(i) for i in z["ids"]], np.asarray(z["features"], np.float64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise MedfailInputError(path, f"cannot read the stored embeddings ({exc}); "
                                f"{rundir.RECOVER}") from None


def discovery_tables(run_dir: Path, task: str, multi_label: bool, per_sample: pd.DataFrame,
                     membership: pd.DataFrame, seed: int, n_boot: int,
                     thresholds: Mapping[str, float] | None = None,
                     null_seed: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``discovery.parquet`` and ``discovery_features.parquet`` of a run directory: ``id,
    half``, ``error`` (mean over targets, for the figure), ``error.<target>``, the two leading
    embedding components ``emb.pc1/2`` when there are embeddings, then every categorical
    feature. ``thresholds``: the run's decision thresholds per target (classification;
    ``run.json: thresholds``). ``null_seed``: the false-discovery check of
    ``benchmarks/bench_discovery.py`` (errors permuted across samples by that seed, so no
    feature or embedding carries an effect); None for the real analysis."""
    preds = None
    if task == "classification":
        preds = read_table(rundir.condition_path(run_dir, CLEAN, task))
        errors = classification_errors(preds, multi_label, thresholds or {})
    else:
        errors = segmentation_errors(per_sample)
    if null_seed is not None:
        order = np.random.default_rng(null_seed).permutation(len(errors))
        errors = pd.DataFrame(errors.to_numpy()[order], index=errors.index,
                              columns=errors.columns)
    ids = list(errors.index)
    halves = split_halves(ids, seed)
    stored = read_embeddings(run_dir)
    groups = None
    if stored is not None:
        emb_ids, emb = stored
        pos = {i: k for k, i in enumerate(emb_ids)}
        if all(i in pos for i in ids):
            groups = embedding_groups(ids, emb[[pos[i] for i in ids]], seed)
    features = feature_table(
        membership, _clean_quality(run_dir), _confidence(run_dir, task, preds, multi_label),
        _labels(preds, multi_label) if preds is not None else None, groups, ids)
    found = discover(features, errors, halves, n_boot, seed)
    table = pd.concat([halves, errors.mean(axis=1).rename("error"),
                       errors.rename(columns=lambda t: error_column(str(t)))], axis=1)
    if groups is not None:
        table = table.join(groups.pcs)
    table = table.join(features).reset_index()
    return found, table


#: examples the report shows: per confirmed slice (at most MAX_SLICES_SHOWN) its worst
#: confirm-half members, and the top label-issue candidates
MAX_SLICES_SHOWN = 3
EXAMPLES_PER_SLICE = 4
LABEL_ISSUES_SHOWN = 6


def example_ids(found: pd.DataFrame | None, features: pd.DataFrame | None,
                issues: pd.DataFrame | None) -> dict[str, list[str]]:
    """``{split: [ids]}`` whose thumbnails the evidence stage stores (``cases/examples.npz``):
    for each of the :data:`MAX_SLICES_SHOWN` confirmed slices with the largest gap, its
    :data:`EXAMPLES_PER_SLICE` highest-error confirm-half members (test split); and the
    :data:`LABEL_ISSUES_SHOWN` top-ranked label-issue candidates (their ``split``)."""
    out: dict[str, list[str]] = {}
    if found is not None and len(found):
        conf = found[found["confirmed"].astype(bool)].sort_values("gap", ascending=False)
        for r in conf.head(MAX_SLICES_SHOWN).itertuples():
            worst = confirm_members(features, str(r.slice), str(r.target)).index
            out.setdefault("test", []).extend(str(i) for i in worst[:EXAMPLES_PER_SLICE])
    if issues is not None and len(issues):
        for r in issues.sort_values("rank").head(LABEL_ISSUES_SHOWN).itertuples():
            out.setdefault(str(r.split), []).append(str(r.id))
    return {k: list(dict.fromkeys(v)) for k, v in out.items()}


def confirm_members(features: pd.DataFrame | None, name: str,
                    target: str | None = None) -> pd.DataFrame:
    """The confirm-half rows of ``discovery_features.parquet`` (indexed by id) inside slice
    ``name``, worst first by ``target``'s error (``error.<target>``; the mean ``error`` when
    absent), which becomes the ``error`` column; empty when the table lacks the slice's
    columns (an older run directory)."""
    if features is None or features.empty or not {"half", "error"} <= set(features.columns):
        return pd.DataFrame()
    table = features.assign(id=features["id"].astype(str)).set_index("id")
    try:
        preds = parse_slice(name)
    except ValueError:  # not a name slice_name writes
        return pd.DataFrame()
    if not set(preds) <= set(table.columns):
        return pd.DataFrame()
    rows = table[members(table, preds) & (table["half"] == CONFIRM).to_numpy()]
    col = error_column(str(target)) if target is not None else "error"
    if col in rows:
        rows = rows.assign(error=rows[col])
    return rows.sort_values("error", ascending=False)


#: a predicate's start in a slice name: ``label=`` or ``<source>.<key>=``
_PREDICATE = re.compile(r"^(label|[A-Za-z_]+\.[^=]+)=")


def parse_slice(name: str) -> dict[str, str]:
    """The predicates of a slice name written by :func:`slice_name` (a value that itself
    holds ``" & "``, e.g. ``meta.scanner=GE & Philips``, stays whole)."""
    parts: list[str] = []
    for piece in name.split(" & "):
        if parts and not _PREDICATE.match(piece):
            parts[-1] += " & " + piece
        else:
            parts.append(piece)
    return dict(part.split("=", 1) for part in parts)


#: slice sources that name a slice in advance (a single such predicate is no discovery)
NAMED_SOURCES = ("gt.", "meta.", "scan.")


def unnamed(name: str) -> bool:
    """Whether a discovered slice is one no configured slice already names: a conjunction,
    or one predicate that is not a ``gt.``/``meta.``/``scan.`` slice."""
    preds = parse_slice(name)
    return len(preds) > 1 or not next(iter(preds)).startswith(NAMED_SOURCES)


def finding_text(row: pd.Series, task: str) -> str:
    """One line for a confirmed slice (taxonomy, checklist)."""
    error = "1 − Dice" if task != "classification" else "error rate"
    if str(row.get("target", ALL_TARGETS)) != ALL_TARGETS:
        error += f" of {row['target']}"
    return (f"{row['description']}: {error} {row['error_confirm']:.3f} vs "
            f"{row['error_rest']:.3f} for the rest of the held-out half (n = "
            f"{int(row['n_confirm'])}), gap {row['gap']:+.3f} [{row['ci_low']:.3f}, "
            f"{row['ci_high']:.3f}] ({row['ci_level']:.1%} Bonferroni CI)")
