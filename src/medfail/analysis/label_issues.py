"""Label-issue detection with cleanlab (Confident Learning) from stored out-of-sample predictions.

A pure analysis module: it reads arrays and tables, never a model or a run's engine.

Classification (:func:`classification_label_issues`) takes the long predictions table
(``predictions/calibration.parquet``: ``id, target, prob, label``, one row per case × target;
the calibration split was not trained on, so the probabilities are out-of-sample as Confident
Learning requires):

* multi-label - each target is its own binary problem, ``pred_probs = [1 − p, p]``,
  ``labels = label``;
* multi-class - one problem over the targets (in table order): ``labels`` = the argmax of each
  case's one-hot labels, ``pred_probs`` = its probabilities (clipped at 0 and divided by their
  sum); one row per case, ``target`` = the given class, ``given_label`` = 1.

``quality`` = ``cleanlab.rank.get_label_quality_scores`` (its default ``method="self_confidence"``:
the predicted probability of the given label, low = suspicious); ``issue`` =
``cleanlab.filter.find_label_issues`` (its default ``filter_by="prune_by_noise_rate"``). Flags
need at least two classes with ``MIN_PER_CLASS`` given labels each (per target for multi-label);
otherwise (one class present: cleanlab raises or flags nothing; a class with a single case: its
threshold is that one probability, and cleanlab flags many cases of noise) nothing is flagged
and ``quality`` is still computed.

Segmentation (:func:`segmentation_label_issues`) scores each image with
``cleanlab.segmentation.rank.get_label_quality_scores`` (``method="softmin"``, temperature 0.1,
over the per-pixel probability of the given label) and counts the pixels that
``cleanlab.segmentation.filter.find_label_issues`` flags, computed one image at a time.

Output rows are sorted by ``quality`` ascending (ties: by ``id``, then ``target``); ``rank`` 1 is
the most suspicious.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

#: Fewer given labels than this in a class (and in all classes but one) → no flags (cleanlab's
#: per-class thresholds are the mean probability of the class's cases: one case is no estimate).
MIN_PER_CLASS = 2
CLS_COLUMNS = ["id", "target", "given_label", "prob", "quality", "issue", "rank"]
SEG_COLUMNS = ["id", "quality", "issue", "n_issue_pixels", "rank"]
#: cleanlab's softmin temperature for image scores (its default).
SOFTMIN_TEMPERATURE = 0.1


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence cleanlab's warnings ("too few examples", "missing classes") and prints."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _flaggable(labels: np.ndarray, n_classes: int) -> bool:
    """Whether at least two classes have ``MIN_PER_CLASS`` given labels each."""
    counts = np.bincount(labels, minlength=n_classes)
    return int((counts >= MIN_PER_CLASS).sum()) >= 2


def cleanlab_scores(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(quality, issue)`` of one classification problem: cleanlab's self-confidence label
    quality and its ``prune_by_noise_rate`` flags (all False unless :func:`_flaggable`);
    ``labels`` (N,) ints in ``0..K-1``, ``pred_probs`` (N, K) rows summing to 1."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    k = pred_probs.shape[1]
    with _quiet():
        if k < 2:  # cleanlab's self-confidence by hand (one class: nothing to flag)
            quality = pred_probs[np.arange(len(labels)), labels].astype(np.float64)
        else:
            quality = np.asarray(get_label_quality_scores(labels, pred_probs), np.float64)
        issue = np.zeros(len(labels), dtype=bool)
        if k >= 2 and _flaggable(labels, k):
            issue = np.asarray(find_label_issues(labels, pred_probs, n_jobs=1), dtype=bool)
    return quality, issue


def _ranked(df: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """``df`` sorted by quality ascending (ties by ``keys``) with ``rank`` = 1, 2, … ."""
    df = df.sort_values(["quality", *keys], kind="mergesort").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df[columns]


def _multi_label(preds: pd.DataFrame) -> pd.DataFrame:
    """One binary problem per target (targets in table order, cases sorted by id)."""
    parts = []
    for target, sub in preds.groupby("target", sort=False):
        sub = sub.sort_values("id", kind="mergesort")
        p = np.clip(sub["prob"].to_numpy(np.float64), 0.0, 1.0)
        y = sub["label"].to_numpy(np.float64).round().astype(np.int64)
        quality, issue = cleanlab_scores(y, np.column_stack([1.0 - p, p]))
        parts.append(pd.DataFrame({"id": sub["id"].to_numpy(), "target": target,
                                   "given_label": y, "prob": p, "quality": quality,
                                   "issue": issue}))
    return pd.concat(parts, ignore_index=True)


def _multi_class(preds: pd.DataFrame) -> pd.DataFrame:
    """One problem over the targets (table order), one row per case (sorted by id)."""
    targets = list(dict.fromkeys(preds["target"]))
    wide = preds.pivot(index="id", columns="target", values=["prob", "label"]).dropna()
    p = np.clip(wide["prob"][targets].to_numpy(np.float64), 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    p = np.divide(p, sums, out=np.full_like(p, 1.0 / len(targets)), where=sums > 0)
    y = np.argmax(wide["label"][targets].to_numpy(np.float64), axis=1)
    quality, issue = cleanlab_scores(y, p)
    return pd.DataFrame({"id": wide.index.to_numpy(), "target": np.asarray(targets)[y],
                         "given_label": 1, "prob": p[np.arange(len(y)), y],
                         "quality": quality, "issue": issue})


def classification_label_issues(preds: pd.DataFrame, multi_label: bool) -> pd.DataFrame:
    """Suspected label errors of a classifier's out-of-sample predictions (module docstring).

    ``preds``: long table with ``id, target, prob, label`` (other columns ignored; rows with a
    missing ``prob`` or ``label`` dropped, and multi-class cases then lacking a target).
    Returns ``id, target, given_label, prob, quality, issue, rank``: ``prob`` = the model's
    probability of the target (multi-label) / of the given class (multi-class, renormalised),
    ``quality`` cleanlab's self-confidence score, ``issue`` its ``prune_by_noise_rate`` flag,
    ``rank`` 1 = lowest quality (ties by id, then target). Empty input → an empty frame with
    these columns."""
    preds = preds.dropna(subset=["prob", "label"])
    if preds.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("id", "target") else float)
                             for c in CLS_COLUMNS}).astype({"issue": bool, "rank": np.int64})
    out = _multi_label(preds) if multi_label else _multi_class(preds)
    return _ranked(out, ["id", "target"], CLS_COLUMNS)


def segmentation_pred_probs(foreground: np.ndarray) -> np.ndarray:
    """``(K, …)`` float32 class probabilities from stored ``(K-1, …)`` foreground maps:
    background = ``max(0, 1 − Σ foreground)``; pixels whose foreground sum exceeds 1 are divided
    by it (so every pixel sums to 1)."""
    fg = np.clip(np.asarray(foreground, dtype=np.float32), 0.0, None)
    total = fg.sum(axis=0, dtype=np.float32)
    probs = np.concatenate([np.clip(1.0 - total, 0.0, None)[None], fg]).astype(np.float32)
    over = total > 1.0
    if over.any():
        probs[:, over] /= total[over]
    return probs


def _image(foreground: np.ndarray, mask: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (1, H, W'), pred_probs (1, K, H, W'))`` of one image or volume (a volume's
    trailing axes flattened: ``(X, Y, Z)`` → ``(X, Y·Z)``)."""
    probs = segmentation_pred_probs(foreground)
    mask = np.asarray(mask)
    if probs.shape[1:] != mask.shape or mask.ndim < 2:
        raise ValueError(f"{key}: mask shape {mask.shape} does not match probabilities "
                         f"{tuple(foreground.shape)} (expected (C-1, *mask.shape))")
    k = probs.shape[0]
    if mask.min() < 0 or mask.max() >= k:
        raise ValueError(f"{key}: mask values must lie in 0..{k - 1}")
    h = mask.shape[0]
    return (mask.reshape(1, h, -1).astype(np.int64), probs.reshape(1, k, h, -1))


def _given_and_mismatch(labels: np.ndarray, pred_probs: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``(p of the given label, argmax ≠ label)`` of one image."""
    lab = labels.reshape(-1)
    flat = pred_probs[0].reshape(pred_probs.shape[1], -1)
    return flat[lab, np.arange(lab.size)], np.argmax(flat, axis=0) != lab


def _smallest(kept: np.ndarray, new: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` smallest values of ``kept`` ∪ ``new`` (unordered)."""
    if len(kept) == m:
        new = new[new < kept.max()]
    both = np.concatenate([kept, new])
    return both if len(both) <= m else np.partition(both, m - 1)[:m]


def _issue_pixels(images: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                  keys: list[str]) -> dict[str, int]:
    """Per image, the number of pixels ``cleanlab.segmentation.filter.find_label_issues`` flags,
    computed one image at a time in four passes: (1) per-class confident thresholds over all
    pixels (cleanlab's ``LabelInspector``), (2) its estimated number M of issues, (3) the M-th
    smallest probability of the given label over all pixels, s*, (4) flagged = among the M
    lowest (``p_label < s*``, ties at s* taken in image-then-pixel order; cleanlab's unstable
    argsort may take other tied pixels) and the predicted class is not the label."""
    from cleanlab.experimental.label_issues_batched import LabelInspector

    k = len(images[keys[0]]) + 1

    def each() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for key in keys:
            labels, probs = _image(images[key], masks[key], key)
            if probs.shape[1] != k:
                raise ValueError(f"{key}: {probs.shape[1] - 1} foreground maps, not {k - 1}")
            yield key, labels, probs

    def flat(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return labels.reshape(-1), probs[0].reshape(k, -1).T

    lab = LabelInspector(num_class=k, store_results=False, verbose=False, n_jobs=1)
    for _, labels, probs in each():
        lab.update_confident_thresholds(*flat(labels, probs))
    for _, labels, probs in each():
        lab.score_label_quality(*flat(labels, probs))
    m = int(lab.get_num_issues(silent=True))
    if m == 0:
        return dict.fromkeys(keys, 0)
    kept = np.empty(0, dtype=np.float32)
    for _, labels, probs in each():
        kept = _smallest(kept, _given_and_mismatch(labels, probs)[0], m)
    cut = kept.max()
    ties_left = m - int((kept < cut).sum())
    counts = {}
    for key, labels, probs in each():
        given, mismatch = _given_and_mismatch(labels, probs)
        tie = np.flatnonzero(given == cut)[:ties_left]
        ties_left -= len(tie)
        top = given < cut
        top[tie] = True
        counts[key] = int((top & mismatch).sum())
    return counts


def segmentation_label_issues(probs: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                              min_issue_pixels: int = 1) -> pd.DataFrame:
    """Suspected mask errors of a segmentation model's out-of-sample probabilities.

    ``probs[id]``: stored foreground maps ``(C-1, H, W)`` or volumes ``(C-1, X, Y, Z)`` (any
    float dtype, cast to float32 one image at a time; background per
    :func:`segmentation_pred_probs`); ``masks[id]``: the integer label map of the same spatial
    shape (0 = background, k = the k-th foreground map). Images may differ in size.

    Returns ``id, quality, issue, n_issue_pixels, rank``: ``quality`` =
    ``cleanlab.segmentation.rank.get_label_quality_scores`` (softmin of the per-pixel
    probability of the given label, computed per image; the same number as a batched call,
    which scores each image independently), ``n_issue_pixels`` = the pixels of the image that
    ``cleanlab.segmentation.filter.find_label_issues`` flags over the whole set (confident
    thresholds pooled over all images; :func:`_issue_pixels`), ``issue`` =
    ``n_issue_pixels >= min_issue_pixels`` (default: any flagged pixel - broad on real data;
    rank by ``quality`` for triage), ``rank`` 1 = lowest quality (ties by id)."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    keys = list(probs)
    missing = [key for key in keys if key not in masks]
    if missing:
        raise KeyError(f"no mask for {missing[:5]}")
    if not keys:
        return pd.DataFrame({"id": pd.Series(dtype=object), "quality": pd.Series(dtype=float),
                             "issue": pd.Series(dtype=bool),
                             "n_issue_pixels": pd.Series(dtype=np.int64),
                             "rank": pd.Series(dtype=np.int64)})
    quality = []
    for key in keys:
        labels, pred_probs = _image(probs[key], masks[key], key)
        with _quiet():
            scores, _ = get_label_quality_scores(labels, pred_probs, method="softmin",
                                                 temperature=SOFTMIN_TEMPERATURE, verbose=False)
        quality.append(float(scores[0]))
    with _quiet():
        n_issue = _issue_pixels(probs, masks, keys)
    out = pd.DataFrame({"id": keys, "quality": quality,
                        "n_issue_pixels": [n_issue[key] for key in keys]})
    out["issue"] = out["n_issue_pixels"] >= min_issue_pixels
    return _ranked(out, ["id"], SEG_COLUMNS)


def recovery(found: pd.DataFrame, truth: Iterable[tuple[str, str]]) -> dict[str, float]:
    """How well the ``issue``-flagged ``(id, target)`` pairs of ``found`` recover the true
    flipped pairs (both compared as strings): ``precision`` = recovered / flagged (NaN when
    nothing is flagged), ``recall`` = recovered / true (NaN when ``truth`` is empty),
    ``n_flagged``, ``n_true``, ``n_recovered``."""
    flagged = {(str(i), str(t)) for i, t in
               found.loc[found["issue"].astype(bool), ["id", "target"]].itertuples(index=False)}
    true = {(str(i), str(t)) for i, t in truth}
    hit = len(flagged & true)
    return {"precision": hit / len(flagged) if flagged else float("nan"),
            "recall": hit / len(true) if true else float("nan"),
            "n_flagged": float(len(flagged)), "n_true": float(len(true)),
            "n_recovered": float(hit)}
