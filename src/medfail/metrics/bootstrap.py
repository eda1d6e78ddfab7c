"""Percentile bootstrap confidence intervals with a shared, reusable resample index matrix.

Draw the index matrix once with ``bootstrap_indices(n, B, seed)`` and pass the same matrix to
every metric and every condition: intervals are then reproducible, and differences between
conditions (Δ intervals) are paired -- each resample compares the same samples.

Convention: the percentile interval ``(q_{α/2}, q_{1−α/2})`` of the resampled statistic over
all B resamples (numpy's default linear interpolation between order statistics).

Undefined resamples (statistic NaN, e.g. AUROC of a resample with a single class) are never
dropped, so they cannot shrink an interval: each counts as the least favourable value for
each bound, below every defined value for the lower bound and above every defined value for
the upper bound. With k undefined resamples the bounds are reported only when they do not
depend on those values, ``k <= floor(α/2 · (B − 1))`` (24 of 1000 at 95 %); otherwise both
are NaN (not reported). Recomputed with numpy (:func:`percentile_ci`; :func:`percentile_cis`
does the same for every row of a matrix at once)::

    lo = np.percentile(np.where(np.isnan(s), np.nanmin(s), s), 100 * α / 2)
    hi = np.percentile(np.where(np.isnan(s), np.nanmax(s), s), 100 * (1 - α / 2))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "auprc_bootstrap",
    "auroc_bootstrap",
    "bootstrap_indices",
    "bootstrap_statistic",
    "max_undefined",
    "mean_ci",
    "paired_delta_ci",
    "paired_statistic_delta_ci",
    "percentile_ci",
    "percentile_cis",
    "resampled_mean",
    "sens_at_spec_bootstrap",
    "statistic_ci",
]

# Resamples are processed in row blocks of about this many elements: bounds memory, and a
# block of int64 counts (8 MiB) stays mostly in cache.
_BLOCK_ELEMS = 1 << 20


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _BLOCK_ELEMS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return a


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2:
        raise ValueError(f"indices must be a 2-D (n_resamples, n) array, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.shape[1] != n:
        raise ValueError(
            f"indices were drawn for {idx.shape[1]} samples (shape {idx.shape}) but the data "
            f"has {n} samples"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n}), got values in [{idx.min()}, {idx.max()}]")
    return idx


def _check_1d(name: str, arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def bootstrap_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Resample index matrix: row b holds the n sample indices (with replacement) of resample b.

    Drawn as ``np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``; int32.

    Raises:
        ValueError: n or n_resamples < 1, or n too large for int32.

    Example:
        >>> idx = bootstrap_indices(5, n_resamples=3, seed=0)
        >>> idx.shape, idx.dtype.kind
        ((3, 5), 'i')
        >>> bool(((idx >= 0) & (idx < 5)).all())
        True
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    if int(n) > np.iinfo(np.int32).max:
        raise ValueError(f"n must fit in int32, got {n!r}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(n), size=(int(n_resamples), int(n)), dtype=np.int32)


def max_undefined(n_resamples: int, alpha: float = 0.05) -> int:
    """The most undefined (NaN) resamples out of ``n_resamples`` that still give an interval:
    ``floor(α/2 · (B − 1))`` (24 of 1000 at α = 0.05; 1 of 50; 0 below 41).

    Example:
        >>> max_undefined(1000), max_undefined(50)
        (24, 1)
    """
    return int(np.floor(_check_alpha(alpha) / 2.0 * (int(n_resamples) - 1) + 1e-9))


def percentile_ci(stats: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval ``(q_{α/2}, q_{1−α/2})`` of resampled statistics.

    NaN resamples (undefined statistic) are kept at the least favourable end for each bound
    (below every defined value for ``lo``, above for ``hi``); when more than
    :func:`max_undefined` of them would reach a bound, the interval is ``(nan, nan)``.
    Edge cases: all NaN (or empty) -> ``(nan, nan)``.

    Raises:
        ValueError: stats not 1-D, or alpha outside (0, 1).

    Example:
        >>> percentile_ci(np.arange(101.0))
        (2.5, 97.5)
        >>> percentile_ci(np.array([1.0, 2.0, np.nan]))
        (nan, nan)
    """
    a = _check_alpha(alpha)
    s = _check_1d("stats", stats).astype(np.float64)
    undefined = np.isnan(s)
    if s.size == 0 or undefined.all() or int(undefined.sum()) > max_undefined(s.size, a):
        return float("nan"), float("nan")
    lo = np.percentile(np.where(undefined, np.nanmin(s), s), 100.0 * a / 2.0)
    hi = np.percentile(np.where(undefined, np.nanmax(s), s), 100.0 * (1.0 - a / 2.0))
    return float(lo), float(hi)


def percentile_cis(stats: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """:func:`percentile_ci` of every row of a (K, B) matrix at once: ``(lo, hi)``, each (K,).

    Row k gives ``percentile_ci(stats[k], alpha)``, the same floats (same NaN substitution
    with the row's ``nanmin`` / ``nanmax``, same ``max_undefined`` rule, numpy's linear
    percentile along ``axis=1``, which interpolates each row exactly as the 1-D call does).
    Rows are processed in blocks of about 2**20 values, so a whole table of intervals costs
    a few numpy calls instead of two per interval. Edge cases: K = 0 -> two empty arrays;
    B = 0 or an all-NaN row -> NaN for that row.

    Raises:
        ValueError: stats not 2-D, or alpha outside (0, 1).

    Example:
        >>> lo, hi = percentile_cis(np.stack([np.arange(101.0), np.full(101, np.nan)]))
        >>> lo.tolist(), hi.tolist()
        ([2.5, nan], [97.5, nan])
    """
    a = _check_alpha(alpha)
    s = np.asarray(stats)
    if s.ndim != 2:
        raise ValueError(f"stats must be 2-D (K, n_resamples), got shape {s.shape}")
    n_rows, n_cols = s.shape
    lo = np.full(n_rows, np.nan)
    hi = np.full(n_rows, np.nan)
    if n_cols == 0:
        return lo, hi
    q_lo, q_hi = 100.0 * a / 2.0, 100.0 * (1.0 - a / 2.0)
    limit = max_undefined(n_cols, a)
    for rows in _row_blocks(n_rows, n_cols):
        block = s[rows].astype(np.float64)
        undefined = np.isnan(block)
        n_undefined = undefined.sum(axis=1)
        ok = (n_undefined < n_cols) & (n_undefined <= limit)
        has_nan = ok & (n_undefined > 0)
        clean = ok & ~has_nan  # no NaN: one call gives both bounds
        lo_block, hi_block = lo[rows], hi[rows]  # views: written in place
        if clean.any():
            lo_block[clean], hi_block[clean] = np.percentile(block[clean], [q_lo, q_hi], axis=1)
        if has_nan.any():
            sub, und = block[has_nan], undefined[has_nan]
            low = np.where(und, np.nanmin(sub, axis=1)[:, None], sub)
            high = np.where(und, np.nanmax(sub, axis=1)[:, None], sub)
            lo_block[has_nan] = np.percentile(low, q_lo, axis=1)
            hi_block[has_nan] = np.percentile(high, q_hi, axis=1)
    return lo, hi


def resampled_mean(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean of each resample, shape (B,): per row b the mean of the FINITE values among
    ``values[indices[b]]``, each counted as often as it is drawn (NaN and ±inf left out, as
    the per-image rows of ``metrics.parquet`` do); NaN for a resample without a finite value.

    >>> v = np.array([1.0, 2.0, np.nan, 4.0])
    >>> resampled_mean(v, np.array([[0, 1, 2, 3], [2, 2, 2, 2], [3, 3, 0, 2]])).tolist()
    [2.3333333333333335, nan, 3.0]

    Raises:
        ValueError: values not 1-D or indices not (B, len(values)) in range.
    """
    v = _check_1d("values", values).astype(np.float64)
    idx = _check_indices(indices, v.size)
    out = np.empty(idx.shape[0], dtype=np.float64)
    for rows in _row_blocks(*idx.shape):
        drawn = v[idx[rows]]
        valid = np.isfinite(drawn)
        sums = np.where(valid, drawn, 0.0).sum(axis=1)
        counts = valid.sum(axis=1)
        block = np.full(sums.shape, np.nan)
        np.divide(sums, counts, out=block, where=counts > 0)
        out[rows] = block
    return out


def mean_ci(values: np.ndarray, indices: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the mean of per-sample values (e.g. per-image Dice).

    Per resample b: the mean of the finite values drawn, :func:`resampled_mean` (NaN and ±inf
    are left out; a resample with no finite value is undefined); then ``percentile_ci``.

    Raises:
        ValueError: values not 1-D, indices not (B, len(values)) in range, or bad alpha.

    Example:
        >>> v = np.array([0.9, 0.7, 0.8, 0.6])
        >>> idx = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [2, 3, 3, 3]])
        >>> tuple(round(x, 4) for x in mean_ci(v, idx))
        (0.655, 0.7975)
    """
    return percentile_ci(resampled_mean(values, indices), alpha)


def paired_delta_ci(
    values_a: np.ndarray, values_b: np.ndarray, indices: np.ndarray, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile CI of the mean paired difference ``b − a`` of per-sample values.

    ``values_a[i]`` and ``values_b[i]`` belong to the same sample i (e.g. Dice of image i before
    and after a perturbation). Per resample: :func:`resampled_mean` of ``values_b − values_a``;
    a sample where either value is NaN or infinite is left out of that mean.

    Raises:
        ValueError: arrays not 1-D or of different lengths, bad indices, or bad alpha.

    Example:
        >>> a = np.array([0.9, 0.7, 0.8, 0.6])
        >>> b = a - np.array([0.1, 0.0, 0.2, 0.1])
        >>> idx = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [2, 3, 3, 3]])
        >>> tuple(round(x, 4) for x in paired_delta_ci(a, b, idx))
        (-0.1237, -0.0525)
    """
    a = _check_1d("values_a", values_a).astype(np.float64)
    b = _check_1d("values_b", values_b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"values_a and values_b must have the same length, got {a.shape} and {b.shape}"
        )
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, left out like any non-finite value
        return percentile_ci(resampled_mean(b - a, indices), alpha)


def _check_arrays(arrays: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or len(arrays) == 0:
        raise ValueError(f"{name} must be a non-empty tuple of arrays")
    arrs = [np.asarray(x) for x in arrays]
    lengths = [len(x) if x.ndim else -1 for x in arrs]
    if len(set(lengths)) != 1 or lengths[0] < 0:
        shapes = [x.shape for x in arrs]
        raise ValueError(f"{name} must share the same first-axis length, got shapes {shapes}")
    return arrs


def bootstrap_statistic(
    statistic: Callable[..., float], arrays: Sequence[np.ndarray], indices: np.ndarray
) -> np.ndarray:
    """Resampled statistic: ``statistic(*[a[indices[b]] for a in arrays])`` for each b, (B,).

    Arrays are indexed along their first axis (jointly, so rows stay aligned).

    Raises:
        ValueError: arrays of different lengths or indices not (B, n) in range.

    Example:
        >>> v = np.array([1.0, 2.0, 3.0, 10.0])
        >>> idx = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [3, 3, 2, 2]])
        >>> bootstrap_statistic(np.median, (v,), idx).tolist()
        [2.5, 1.5, 6.5]
    """
    arrs = _check_arrays(arrays, "arrays")
    idx = _check_indices(indices, len(arrs[0]))
    return np.array([float(statistic(*[a[row] for a in arrs])) for row in idx], dtype=np.float64)


def statistic_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    indices: np.ndarray,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile CI of any set-level statistic, e.g. ``statistic_ci(auroc, (y, s), idx)``.

    NaN statistics (undefined on a resample) are handled by ``percentile_ci`` (kept at the
    least favourable end; too many of them -> ``(nan, nan)``).

    Example:
        >>> v = np.array([1.0, 2.0, 3.0, 10.0])
        >>> idx = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [3, 3, 2, 2]])
        >>> tuple(float(x) for x in statistic_ci(np.median, (v,), idx))
        (1.55, 6.3)
    """
    a = _check_alpha(alpha)
    return percentile_ci(bootstrap_statistic(statistic, arrays, indices), a)


def paired_statistic_delta_ci(
    statistic: Callable[..., float],
    arrays_a: Sequence[np.ndarray],
    arrays_b: Sequence[np.ndarray],
    indices: np.ndarray,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile CI of ``statistic(*arrays_b) − statistic(*arrays_a)`` over paired resamples.

    For set-level metrics such as AUROC under two conditions on the same samples: both are
    evaluated on the same resample rows, so the interval accounts for the pairing.

    Raises:
        ValueError: arrays of different lengths (within or across a/b), bad indices or alpha.

    Example:
        >>> a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 3.5, 4.5])
        >>> idx = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [3, 3, 2, 2]])
        >>> tuple(float(x) for x in paired_statistic_delta_ci(np.mean, (a,), (b,), idx))
        (0.25625, 0.49375)
    """
    a = _check_alpha(alpha)
    arrs_a = _check_arrays(arrays_a, "arrays_a")
    arrs_b = _check_arrays(arrays_b, "arrays_b")
    if len(arrs_a[0]) != len(arrs_b[0]):
        raise ValueError(
            "arrays_a and arrays_b must describe the same samples, got lengths "
            f"{len(arrs_a[0])} and {len(arrs_b[0])}"
        )
    stats_a = bootstrap_statistic(statistic, arrs_a, indices)
    stats_b = bootstrap_statistic(statistic, arrs_b, indices)
    return percentile_ci(stats_b - stats_a, a)


def _check_binary(
    y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (y as bool, scores as float64, indices) for the set-level bootstraps."""
    t = _check_1d("y_true", y_true)
    s = _check_1d("y_score", y_score)
    if t.shape != s.shape:
        raise ValueError(
            f"y_true and y_score must have the same length, got y_true {t.shape} "
            f"and y_score {s.shape}"
        )
    if t.dtype != np.bool_ and np.any((t != 0) & (t != 1)):
        raise ValueError("y_true must contain only 0 and 1")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"y_score contains {int(np.isnan(s).sum())} NaN value(s)")
    return t.astype(bool), s, _check_indices(indices, t.size)


def _resample_counts(
    key: np.ndarray, idx: np.ndarray, width: int, buf: np.ndarray | None = None
) -> np.ndarray:
    """(b, width) int64 multiplicities: ``out[r, k] = #{j : key[idx[r, j]] == k}``.

    One ``np.bincount`` over the flattened (resample, key) positions; ``idx`` must already be
    validated to lie in ``[0, len(key))`` (``mode="wrap"`` then only skips the bounds check).
    ``buf``: optional reusable int64 scratch of at least ``idx.size`` elements.
    """
    n_rows = idx.shape[0]
    if buf is None:
        buf = np.empty(idx.size, dtype=np.int64)
    flat = buf[: idx.size].reshape(idx.shape)
    np.take(key, idx, mode="wrap", out=flat)
    flat += (np.arange(n_rows, dtype=np.int64) * width)[:, None]
    return np.bincount(flat.ravel(), minlength=n_rows * width).reshape(n_rows, width)


def auroc_bootstrap(y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """AUROC of every resample at once, shape (B,); no Python loop over resamples.

    Mann–Whitney with half credit for ties, as ``roc_auc_score``: with ``x_b[i]`` the
    multiplicity of sample i in resample b,
    ``AUC_b = Σ_{i pos} Σ_{j neg} x_b[i] x_b[j] ([s_i > s_j] + ½[s_i = s_j]) / (P_b · N_b)``,
    ``P_b = Σ_{i pos} x_b[i]``, ``N_b = Σ_{j neg} x_b[j]``.

    Computation (exact integer arithmetic until the final division): scores are sorted once.
    The negatives, in ascending score order, get columns ``0..N−1``; a positive i is summarised
    by ``lo_i = #{neg j : s_j < s_i}`` and ``hi_i = #{neg j : s_j ≤ s_i}`` and shares a column
    with the positives of the same ``(lo, hi)`` pair. One ``np.bincount`` per block of
    resamples gives the negative multiplicities ``neg_b`` and the per-pair positive
    multiplicities ``Q_b[p]``; with ``C_b[k] = Σ_{j<k} neg_b[j]`` (a cumulative sum over the
    negatives only), ``2·U_b = Σ_p Q_b[p] · (C_b[lo_p] + C_b[hi_p])`` and
    ``AUC_b = 2·U_b / (2 · P_b · N_b)``. The classes are swapped (labels flipped, scores
    negated, which leaves the AUROC unchanged) so that the cumulated class is the larger one
    and the positive columns are at most ``N + 1``.

    Edge cases: a resample with only one class -> NaN.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, NaN scores, or bad indices.

    Example:
        >>> y = np.array([0, 0, 1, 1])
        >>> s = np.array([0.1, 0.6, 0.4, 0.9])
        >>> idx = np.array([[0, 1, 2, 3], [0, 1, 3, 3], [0, 0, 1, 1]])
        >>> auroc_bootstrap(y, s, idx).tolist()
        [0.75, 1.0, nan]
    """
    y, s, idx = _check_binary(y_true, y_score, indices)
    n = y.size
    if 2 * int(y.sum()) > n:  # AUROC(y, s) == AUROC(1 - y, -s): cumulate the larger class
        y, s = ~y, -s
    order = np.argsort(s, kind="mergesort")
    y_sorted = y[order]
    neg_scores, pos_scores = s[order][~y_sorted], s[order][y_sorted]
    n_neg = neg_scores.size
    lo = np.searchsorted(neg_scores, pos_scores, side="left")
    hi = np.searchsorted(neg_scores, pos_scores, side="right")
    key_sorted = np.empty(n, dtype=np.int64)
    key_sorted[~y_sorted] = np.arange(n_neg)
    ties = bool(np.any(lo != hi))
    if ties:  # one column per distinct (lo, hi) pair
        pairs, slot = np.unique(np.stack([lo, hi]), axis=1, return_inverse=True)
        key_sorted[y_sorted] = n_neg + slot.ravel()
        n_slots = pairs.shape[1]
    else:  # lo == hi: the column is lo itself (some may stay empty)
        key_sorted[y_sorted] = n_neg + lo
        n_slots = n_neg + 1
    key = np.empty(n, dtype=np.int64)
    key[order] = key_sorted
    width = n_neg + n_slots

    out = np.empty(idx.shape[0], dtype=np.float64)
    blocks = list(_row_blocks(idx.shape[0], width))
    max_rows = max((r.stop - r.start for r in blocks), default=0)
    scratch = np.empty(max_rows * n, dtype=np.int64)  # reused: no page faults per block
    cum_buf = np.zeros((max_rows, n_neg + 1), dtype=np.int64)  # column 0 stays 0
    for rows in blocks:
        counts = _resample_counts(key, idx[rows], width, scratch)
        q = counts[:, n_neg:]
        cum_neg = cum_buf[: q.shape[0]]
        np.cumsum(counts[:, :n_neg], axis=1, out=cum_neg[:, 1:])
        if ties:
            twice_u = (np.einsum("ij,ij->i", q, cum_neg[:, pairs[0]])
                       + np.einsum("ij,ij->i", q, cum_neg[:, pairs[1]]))
        else:
            twice_u = 2 * np.einsum("ij,ij->i", q, cum_neg)
        n_neg_b = cum_neg[:, -1]
        denom = 2 * (n - n_neg_b) * n_neg_b  # P_b = n - N_b: every resample draws n samples
        block = np.full(q.shape[0], np.nan)
        np.divide(twice_u, denom, out=block, where=denom > 0)
        out[rows] = block
    return out


def _group_counts(
    y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Per block of resamples: (rows, pos, neg), each (b, G) int64 multiplicities of positives
    and negatives in the G tied-score groups, groups in ascending score order."""
    y, s, idx = _check_binary(y_true, y_score, indices)
    t = y.astype(np.int64)
    n = t.size

    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1]
    n_groups = starts.size
    group_sorted = np.zeros(n, dtype=np.int64)
    group_sorted[starts[1:]] = 1
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(group_sorted)
    # key = 2·group + class: one bincount per block gives (B, G, 2) multiplicities
    key = 2 * group + t
    width = 2 * n_groups
    blocks = list(_row_blocks(idx.shape[0], width))
    scratch = np.empty(max((r.stop - r.start for r in blocks), default=0) * n, dtype=np.int64)
    for rows in blocks:
        counts = _resample_counts(key, idx[rows], width, scratch).reshape(-1, n_groups, 2)
        yield rows, counts[..., 1], counts[..., 0]


def auprc_bootstrap(y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Average precision of every resample at once, shape (B,); equals ``average_precision_score``.

    With tied-score groups in descending score order, TP_g / FP_g the cumulative resampled
    positives / negatives scored at or above group g and P = TP_last:
    ``AP_b = Σ_g (pos_g / P) · TP_g / (TP_g + FP_g)``. No positives -> NaN; no negatives -> 1.

    Example:
        >>> y = np.array([0, 0, 1, 1])
        >>> s = np.array([0.1, 0.6, 0.4, 0.9])
        >>> idx = np.array([[0, 1, 2, 3], [0, 1, 3, 3], [0, 0, 1, 1]])
        >>> [round(x, 4) for x in auprc_bootstrap(y, s, idx).tolist()]
        [0.8333, 1.0, nan]
    """
    out = np.empty(len(indices), dtype=np.float64)
    for rows, pos, neg in _group_counts(y_true, y_score, indices):
        pos, neg = pos[:, ::-1].astype(np.float64), neg[:, ::-1].astype(np.float64)
        tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        n_pos = tp[:, -1:]
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.sum(pos * precision, axis=1) / n_pos[:, 0]
        out[rows] = np.where(n_pos[:, 0] > 0, ap, np.nan)
    return out


def sens_at_spec_bootstrap(y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray,
                           specificity: float = 0.95) -> np.ndarray:
    """Sensitivity at ``specificity`` of every resample at once, shape (B,).

    Equals ``sens_at_spec``: the highest TP/P over thresholds ``score >= t`` (distinct scores,
    plus "predict nothing") whose specificity 1 - FP/N reaches the target (1e-12 slack).
    One class in a resample -> NaN.

    Example:
        >>> y = np.array([0, 0, 1, 1])
        >>> s = np.array([0.1, 0.6, 0.4, 0.9])
        >>> idx = np.array([[0, 1, 2, 3], [0, 1, 3, 3], [0, 0, 1, 1]])
        >>> sens_at_spec_bootstrap(y, s, idx, 0.95).tolist()
        [0.5, 1.0, nan]
    """
    out = np.empty(len(indices), dtype=np.float64)
    for rows, pos, neg in _group_counts(y_true, y_score, indices):
        pos, neg = pos[:, ::-1].astype(np.float64), neg[:, ::-1].astype(np.float64)
        tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        n_pos, n_neg = tp[:, -1:], fp[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = 1.0 - fp / n_neg >= specificity - 1e-12
            sens = np.where(ok, tp / n_pos, 0.0).max(axis=1)
        out[rows] = np.where((n_pos[:, 0] > 0) & (n_neg[:, 0] > 0), sens, np.nan)
    return out
