"""Binary classification metrics for one target.

All functions take 1-D arrays ``(y_true, y_score | y_pred | y_prob)`` of equal length with
``y_true`` in {0, 1} (bool accepted). Set-level metrics return a Python float; a metric that
is undefined on the given labels (e.g. AUROC with one class present) returns ``nan`` so the
caller can report and flag it -- never a made-up value such as 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "auprc",
    "auroc",
    "brier",
    "brier_per_sample",
    "f1",
    "sens_at_95spec",
    "sens_at_spec",
    "threshold_at_sensitivity",
    "threshold_max_f1",
]

# Sensitivities within this absolute slack of the target count as reaching it (as for spec).
_SENS_ATOL = 1e-12

# Specificities within this absolute slack of the target count as reaching it, so that e.g.
# 19/20 negatives correctly rejected meets a 0.95 target despite float rounding.
_SPEC_ATOL = 1e-12


def _as_binary(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        uniq = np.unique(arr[bad])[:5]
        raise ValueError(
            f"{name} must contain only 0 and 1, found {int(bad.sum())} other value(s), "
            f"e.g. {uniq.tolist()}"
        )
    return arr.astype(np.int64)


def _check_inputs(
    y_true: np.ndarray, y_other: np.ndarray, other_name: str, binary_other: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (y_true, y_other): 1-D, same length, y_true 0/1, y_other numeric without NaN."""
    y_true = np.asarray(y_true)
    y_other = np.asarray(y_other)
    for name, arr in (("y_true", y_true), (other_name, y_other)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if y_true.shape != y_other.shape:
        raise ValueError(
            f"y_true and {other_name} must have the same length, got y_true {y_true.shape} "
            f"and {other_name} {y_other.shape}"
        )
    t = _as_binary("y_true", y_true)
    if binary_other:
        return t, _as_binary(other_name, y_other)
    if y_other.dtype == np.bool_:
        y_other = y_other.astype(np.float64)
    if not np.issubdtype(y_other.dtype, np.number):
        raise ValueError(f"{other_name} must be numeric, got dtype {y_other.dtype}")
    n_nan = int(np.count_nonzero(np.isnan(y_other))) if y_other.dtype.kind == "f" else 0
    if n_nan:
        raise ValueError(f"{other_name} contains {n_nan} NaN value(s)")
    return t, y_other.astype(np.float64)


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve, from ranks (Mann–Whitney U).

    ``AUROC = (Σ_{i: y_i=1} rank_i − P(P+1)/2) / (P·N)`` with average ranks for tied scores
    (a positive-negative tie counts ½), P positives and N negatives. Equals
    ``sklearn.metrics.roc_auc_score``.

    Edge cases: only one class present (or no samples) -> ``nan`` -- reported as NaN and
    flagged by the caller, never 0.5. All scores equal -> 0.5.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, or NaN in y_score.

    Example:
        >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
        0.75
    """
    t, s = _check_inputs(y_true, y_score, "y_score")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    ``AP = Σ_k (R_k − R_{k−1}) · P_k`` over the distinct score thresholds t_1 > t_2 > ...,
    with predictions ``score >= t_k``, ``R_0 = 0``, and tied scores entering together.
    Identical to ``sklearn.metrics.average_precision_score``.

    Edge cases: no positives (or no samples) -> ``nan``. No negatives -> 1.0.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, or NaN in y_score.

    Example:
        >>> round(auprc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])), 4)
        0.8333
    """
    t, s = _check_inputs(y_true, y_score, "y_score")
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    # last index of each group of tied scores
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), t.size - 1]
    tps = np.cumsum(t_sorted)[last]
    precision = tps / (last + 1.0)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def sens_at_spec(y_true: np.ndarray, y_score: np.ndarray, specificity: float = 0.95) -> float:
    """Highest sensitivity over thresholds whose specificity reaches the target.

    Over decision rules ``score >= t`` for every t (each distinct score, plus +inf which
    predicts nothing positive): ``max TPR(t)`` subject to ``TNR(t) >= specificity``
    (with a 1e-12 slack for rounding, so 19/20 meets 0.95). Equivalently
    ``max tpr[fpr <= 1 - specificity]`` on ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``.

    Edge cases: only one class present (or no samples) -> ``nan``.

    Raises:
        ValueError: as ``auroc``, or specificity outside [0, 1].

    Example:
        >>> y = np.array([0, 0, 0, 0, 1, 1])
        >>> s = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
        >>> sens_at_spec(y, s, 0.75)
        1.0
    """
    spec = float(specificity)
    if not 0.0 <= spec <= 1.0:
        raise ValueError(f"specificity must be in [0, 1], got {specificity!r}")
    t, s = _check_inputs(y_true, y_score, "y_score")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), t.size - 1]
    tps = np.r_[0, np.cumsum(t_sorted)[last]]
    fps = np.r_[0, (last + 1) - tps[1:]]
    ok = (1.0 - fps / n_neg) >= spec - _SPEC_ATOL
    return float(tps[ok].max() / n_pos)


def sens_at_95spec(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Sensitivity at 95% specificity: ``sens_at_spec(y_true, y_score, 0.95)``.

    Example:
        >>> sens_at_95spec(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
        0.5
    """
    return sens_at_spec(y_true, y_score, specificity=0.95)


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 score of binary decisions for the positive class.

    ``F1 = 2·TP / (2·TP + FP + FN)``.

    Edge cases: no positives in y_true and none predicted (TP + FP + FN = 0; includes no
    samples) -> ``nan`` (undefined; sklearn ``f1_score(..., zero_division=np.nan)``).

    Raises:
        ValueError: not 1-D, lengths differ, or y_true / y_pred not 0/1.

    Example:
        >>> round(f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])), 4)
        0.5
        >>> f1(np.array([0, 0]), np.array([0, 0]))
        nan
    """
    t, p = _check_inputs(y_true, y_pred, "y_pred", binary_other=True)
    tp = int(np.count_nonzero((t == 1) & (p == 1)))
    fp = int(np.count_nonzero((t == 0) & (p == 1)))
    fn = int(np.count_nonzero((t == 1) & (p == 0)))
    denom = 2 * tp + fp + fn
    if denom == 0:
        return float("nan")
    return 2.0 * tp / denom


def brier_per_sample(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Per-sample Brier score ``(p_i − y_i)^2`` as a float64 array of y's length.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, or y_prob NaN / outside [0, 1].

    Example:
        >>> brier_per_sample(np.array([1, 0]), np.array([0.75, 0.5])).tolist()
        [0.0625, 0.25]
    """
    t, p = _check_inputs(y_true, y_prob, "y_prob")
    outside = (p < 0) | (p > 1)
    if outside.any():
        raise ValueError(
            f"y_prob must be probabilities in [0, 1], found {int(outside.sum())} value(s) "
            f"outside, e.g. {float(p[outside][0])!r}"
        )
    return (p - t) ** 2


def brier(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Brier score ``mean_i (p_i − y_i)^2`` (lower is better; equals
    ``sklearn.metrics.brier_score_loss``).

    Edge cases: no samples -> ``nan``.

    Raises:
        ValueError: as ``brier_per_sample``.

    Example:
        >>> brier(np.array([1, 0]), np.array([0.75, 0.5]))
        0.15625
    """
    per = brier_per_sample(y_true, y_prob)
    return float(per.mean()) if per.size else float("nan")


def _threshold_curve(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order with TP and FP counts of ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), t.size - 1]
    tps = np.cumsum(t_sorted)[last]
    fps = (last + 1) - tps
    return s_sorted[last], tps, fps


def threshold_max_f1(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Decision threshold maximising F1 of the rule ``score >= t``.

    ``t* = argmax_t 2·TP(t) / (2·TP(t) + FP(t) + FN(t))`` over the distinct values of y_score
    (tied scores enter together); among thresholds with equal F1 the highest t is returned
    (fewest positive calls). F1 ties are exact (integer ratios, correctly rounded).

    Edge cases: only one class present (or no samples) -> 0.5, a neutral default for
    probabilities: with no positives F1 is 0 at every threshold and with no negatives any
    threshold below the scores is "optimal", so the data do not determine a threshold. Check
    both classes are present before trusting the value.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, or NaN in y_score.

    Example:
        >>> threshold_max_f1(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
        0.4
    """
    t, s = _check_inputs(y_true, y_score, "y_score")
    n_pos = int(t.sum())
    if n_pos == 0 or n_pos == t.size:
        return 0.5
    thresholds, tps, fps = _threshold_curve(t, s)
    f1s = 2.0 * tps / (tps + fps + n_pos)  # 2TP + FP + FN = TP + FP + P
    return float(thresholds[np.argmax(f1s)])  # first maximum = highest threshold


def threshold_at_sensitivity(
    y_true: np.ndarray, y_score: np.ndarray, sensitivity: float = 0.95
) -> float:
    """Highest threshold t whose rule ``score >= t`` reaches the target sensitivity.

    ``t* = max {t in distinct scores : TP(t) / P >= sensitivity}`` (with a 1e-12 slack for
    rounding, so 19/20 meets 0.95); the highest such t has the best specificity among them.
    Equivalently ``thresholds[tpr >= sensitivity][0]`` on ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)`` excluding its leading +inf. ``sensitivity = 0`` gives the maximum
    score; ``1`` the lowest score of a positive.

    Edge cases: no positives (or no samples) -> ``nan`` (sensitivity undefined). No negatives
    is fine.

    Raises:
        ValueError: as ``threshold_max_f1``, or sensitivity outside [0, 1].

    Example:
        >>> y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])
        >>> threshold_at_sensitivity(y, s, 0.95)
        0.4
    """
    sens = float(sensitivity)
    if not 0.0 <= sens <= 1.0:
        raise ValueError(f"sensitivity must be in [0, 1], got {sensitivity!r}")
    t, s = _check_inputs(y_true, y_score, "y_score")
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    thresholds, tps, _ = _threshold_curve(t, s)
    ok = tps / n_pos >= sens - _SENS_ATOL  # monotone in decreasing t: first hit is highest t
    return float(thresholds[np.argmax(ok)])
