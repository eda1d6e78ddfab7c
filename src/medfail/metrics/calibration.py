"""Calibration metrics: reliability bins, ECE (equal-width, adaptive, top-label), Brier, NLL.

Binary functions take 1-D ``(y_true, y_prob)`` with ``y_true`` in {0, 1} (bool accepted) and
``y_prob = P(y = 1)`` in [0, 1], one target at a time. Multi-class functions take integer
``labels`` (N,) in [0, K) and probabilities ``probs`` (N, K) whose rows sum to 1 (±1e-3).
Set-level metrics return a Python float; no samples -> ``nan``.

BIN-EDGE CONVENTION (every binned metric here): ``n_bins`` = B bins with edges
``e_0 <= e_1 <= ... <= e_B``; bin b holds ``e_b <= p < e_{b+1}`` (closed left, open right),
except the last bin, ``e_{B-1} <= p <= e_B``, which is closed on both sides so that p = 1 is
counted in it (numpy.histogram semantics, Guo et al. 2017). Equal-width edges are
``e_b = b / B`` computed as a single division (the double nearest to b/B, so p = 0.2 is *on*
the edge 1/5). Equal-mass ("quantile") edges are ``e_0 = 0``, ``e_B = 1`` and
``e_b = quantile(p, b / B)`` (numpy's linear interpolation) in between; tied probabilities
always share a bin, so with heavy ties some bins are empty and the others hold more than N/B.
See docs/calibration.md for how torchmetrics, MONAI and netcal differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from .classification import _check_inputs, brier

__all__ = [
    "ReliabilityBins",
    "adaptive_ece",
    "bin_edges",
    "brier",
    "brier_multiclass",
    "ece",
    "ece_top_label",
    "nll",
    "nll_multiclass",
    "reliability_bins",
    "top_label",
]

_STRATEGIES = ("uniform", "quantile")

# Rows of a probability matrix must sum to 1 within this tolerance (catches logits and
# per-class sigmoid outputs, tolerates float32/float16 softmax rounding).
_ROW_SUM_ATOL = 1e-3


# ---------------------------------------------------------------- validation


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _check_strategy(strategy: str) -> str:
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    return strategy


def _check_probs_range(name: str, p: np.ndarray) -> None:
    n_nan = int(np.count_nonzero(np.isnan(p)))
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s)")
    outside = (p < 0) | (p > 1)
    if outside.any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1], found {int(outside.sum())} value(s) "
            f"outside, e.g. {float(p[outside][0])!r}"
        )


def _as_float(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_binary(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate binary (y_true, y_prob): as the classification metrics, plus y_prob in [0, 1]."""
    y, p = _check_inputs(y_true, y_prob, "y_prob")
    if np.iscomplexobj(np.asarray(y_prob)):
        raise ValueError(f"y_prob must be real numeric, got dtype {np.asarray(y_prob).dtype}")
    _check_probs_range("y_prob", p)
    return y.astype(np.float64), p


def _check_multiclass(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (labels (N,), probs (N, K)): K >= 2, probabilities with rows summing to 1,
    labels integers in [0, K)."""
    lab = np.asarray(labels)
    pr = np.asarray(probs)
    if pr.ndim != 2 or pr.shape[1] < 2:
        raise ValueError(f"probs must be a 2-D (N, K) array with K >= 2, got shape {pr.shape}")
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if lab.shape[0] != pr.shape[0]:
        raise ValueError(
            f"labels and probs must have the same number of samples, got labels {lab.shape} "
            f"and probs {pr.shape}"
        )
    pr = _as_float("probs", pr)
    _check_probs_range("probs", pr)
    row_err = np.abs(pr.sum(axis=1) - 1.0)
    bad_rows = row_err > _ROW_SUM_ATOL
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        raise ValueError(
            f"probs rows must sum to 1 (±{_ROW_SUM_ATOL:g}), found {int(bad_rows.sum())} row(s) "
            f"that do not, e.g. row {i} sums to {float(pr[i].sum())!r} (logits or per-class "
            "sigmoid outputs?)"
        )
    labf = _as_float("labels", lab)
    k = pr.shape[1]
    bad = (labf != np.round(labf)) | (labf < 0) | (labf >= k)
    if bad.any():
        uniq = np.unique(labf[bad])[:5]
        raise ValueError(
            f"labels must be integers in [0, {k}) for probs with {k} columns, found "
            f"{int(bad.sum())} other value(s), e.g. {uniq.tolist()}"
        )
    return labf.astype(np.int64), pr


def _check_eps(eps: float) -> float:
    e = float(eps)
    if not 0.0 < e < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    return e


# ---------------------------------------------------------------- binning


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin statistics for a reliability diagram (B bins).

    Attributes:
        edges: (B + 1,) bin edges, bin b = ``[edges[b], edges[b+1])``, the last bin closed.
        counts: (B,) int64 number of samples per bin.
        mean_confidence: (B,) mean predicted probability per bin; ``nan`` for empty bins.
        frequency: (B,) observed frequency of y = 1 per bin (the bin "accuracy"; for the
            top-label view, the share of correct predictions); ``nan`` for empty bins.
        strategy: "uniform" (equal-width) or "quantile" (equal-mass).
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    frequency: np.ndarray
    strategy: str

    @property
    def n_samples(self) -> int:
        """Total number of samples N."""
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """``Σ_b (n_b / N) · |frequency_b − mean_confidence_b|``; empty bins add 0; N = 0 -> nan."""
        n = self.n_samples
        if n == 0:
            return float("nan")
        full = self.counts > 0
        gaps = np.abs(self.frequency[full] - self.mean_confidence[full])
        return float(np.sum(self.counts[full] / n * gaps))


def bin_edges(y_prob: np.ndarray, n_bins: int = 15, strategy: str = "uniform") -> np.ndarray:
    """Bin edges (n_bins + 1,) for probabilities in [0, 1].

    "uniform": ``e_b = b / n_bins``. "quantile": ``e_0 = 0``, ``e_B = 1``,
    ``e_b = np.quantile(y_prob, b / B)`` (linear interpolation) for 0 < b < B; edges may
    repeat when probabilities tie. With no samples, quantile edges fall back to uniform.

    Raises:
        ValueError: y_prob not 1-D, NaN or outside [0, 1]; bad n_bins or strategy.

    Example:
        >>> bin_edges(np.array([0.1, 0.2, 0.9]), n_bins=4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> bin_edges(np.array([0.1, 0.2, 0.3, 0.9]), n_bins=2, strategy='quantile').tolist()
        [0.0, 0.25, 1.0]
    """
    b = _check_n_bins(n_bins)
    _check_strategy(strategy)
    p = np.asarray(y_prob)
    if p.ndim != 1:
        raise ValueError(f"y_prob must be 1-D, got shape {p.shape}")
    p = _as_float("y_prob", p)
    _check_probs_range("y_prob", p)
    return _edges(p, b, strategy)


def _edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    uniform = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    if strategy == "uniform" or p.size == 0:
        return uniform
    inner = np.quantile(p, uniform[1:-1]) if n_bins > 1 else np.empty(0)
    return np.concatenate(([0.0], inner, [1.0]))


def _bin_index(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each p: the b with edges[b] <= p < edges[b+1]; p = edges[-1] goes to the last bin."""
    n_bins = edges.size - 1
    idx = np.searchsorted(edges, p, side="right") - 1
    return np.clip(idx, 0, n_bins - 1)


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: str) -> ReliabilityBins:
    edges = _edges(p, n_bins, strategy)
    idx = _bin_index(p, edges)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    conf = np.full(n_bins, np.nan)
    freq = np.full(n_bins, np.nan)
    full = counts > 0
    conf[full] = sum_p[full] / counts[full]
    freq[full] = sum_y[full] / counts[full]
    return ReliabilityBins(edges, counts, conf, freq, strategy)


def reliability_bins(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityBins:
    """Reliability-diagram bins of binary predictions: per-bin edges, counts, mean
    confidence (mean y_prob) and observed frequency of y = 1.

    CONVENTION: bins ``[e_b, e_{b+1})``, last bin closed (module docstring); "uniform" =
    equal-width, "quantile" = equal-mass. Plot ``frequency`` against ``mean_confidence`` and
    show ``counts``. For the top-label (multi-class) diagram pass ``top_label(labels, probs)``.

    EDGE CASES: empty bins have count 0 and NaN means. No samples -> all counts 0.

    Raises:
        ValueError: not 1-D, lengths differ, y_true not 0/1, y_prob NaN / outside [0, 1],
            n_bins not an integer >= 1, or unknown strategy.

    Example:
        >>> y, p = np.array([0, 1, 1, 1]), np.array([0.2, 0.3, 0.8, 0.9])
        >>> rb = reliability_bins(y, p, n_bins=2)
        >>> rb.counts.tolist(), rb.frequency.tolist()
        ([2, 2], [0.5, 1.0])
        >>> rb.mean_confidence.round(4).tolist()
        [0.25, 0.85]
        >>> round(rb.ece, 4)
        0.2
    """
    b = _check_n_bins(n_bins)
    s = _check_strategy(strategy)
    y, p = _check_binary(y_true, y_prob)
    return _reliability(y, p, b, s)


def ece(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """Expected calibration error of binary probabilities, ``Σ_b (n_b / N) · |acc_b − conf_b|``.

    FORMULA: ``conf_b`` = mean y_prob in bin b, ``acc_b`` = observed frequency of y = 1 in
    bin b, n_b its size; empty bins contribute 0.

    CONVENTION: bins ``[e_b, e_{b+1})`` with the last bin closed, ``e_b = b / n_bins``
    (module docstring). Equals torchmetrics ``BinaryCalibrationError(n_bins, norm="l1")``
    except when a probability is exactly 1.0 (torchmetrics counts it in an extra bin of its
    own) or exactly on an edge that ``torch.linspace`` rounds differently (e.g. 0.3 for
    n_bins=10); see docs/calibration.md. ``strategy="quantile"`` is ``adaptive_ece``.

    EDGE CASES: no samples -> nan; one sample -> ``|y − p|``; all probabilities equal ->
    ``|mean(y) − p|``.

    Raises:
        ValueError: as ``reliability_bins``.

    Example:
        >>> y, p = np.array([0, 1, 1, 1]), np.array([0.2, 0.3, 0.8, 0.9])
        >>> round(ece(y, p, n_bins=2), 4)
        0.2
    """
    return reliability_bins(y_true, y_prob, n_bins, strategy).ece


def adaptive_ece(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> float:
    """Adaptive ECE: ``ece`` with equal-mass bins (``strategy="quantile"``).

    Edges at the b/B quantiles of y_prob (linear interpolation), so each bin holds about N/B
    samples (exactly ⌊N/B⌋ or ⌈N/B⌉ without ties; tied probabilities share a bin). Weighted
    by n_b / N like ECE (the "AdaECE" of Mukhoti et al. 2020).

    Raises:
        ValueError: as ``reliability_bins``.

    Example:
        >>> y, p = np.array([0, 1, 1, 1]), np.array([0.2, 0.3, 0.8, 0.9])
        >>> round(adaptive_ece(y, p, n_bins=2), 4)
        0.2
    """
    return ece(y_true, y_prob, n_bins, strategy="quantile")


def top_label(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label view of multi-class predictions: ``(correct, confidence)``.

    ``confidence_i = max_k p_ik`` and ``correct_i = 1[argmax_k p_ik == label_i]`` (int 0/1;
    the first maximum wins ties, like ``np.argmax`` and ``torch.max``). A 1-D ``probs`` is
    taken as binary ``P(y = 1)`` and expanded to ``[1 − p, p]`` (so p = 0.5 predicts 0).
    ``reliability_bins(*top_label(labels, probs))`` gives the top-label reliability diagram.

    Raises:
        ValueError: probs not (N,) or (N, K) probabilities with rows summing to 1, labels
            not integers in [0, K), or lengths differ.

    Example:
        >>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]])
        >>> correct, confidence = top_label(np.array([0, 2]), probs)
        >>> correct.tolist(), confidence.tolist()
        ([1, 0], [0.7, 0.5])
    """
    pr = np.asarray(probs)
    if pr.ndim == 1:
        pr = _as_float("probs", pr)
        _check_probs_range("probs", pr)
        pr = np.stack([1.0 - pr, pr], axis=1)
    lab, pr = _check_multiclass(labels, pr)
    pred = np.argmax(pr, axis=1) if pr.shape[0] else np.empty(0, dtype=np.int64)
    conf = pr[np.arange(pr.shape[0]), pred]
    return (pred == lab).astype(np.int64), conf


def ece_top_label(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """Top-label ECE: ``ece`` of (correct, confidence) from ``top_label(labels, probs)``.

    FORMULA: ``Σ_b (n_b / N) · |acc_b − conf_b|`` with ``conf`` = max probability and
    ``acc`` = share of argmax == label in bin b. This is what torchmetrics
    ``MulticlassCalibrationError(num_classes=K, n_bins, norm="l1")`` computes (it works in
    float32; same edge caveats as ``ece``). For binary ``probs`` (N,) (P(y=1)) this is the
    top-label ECE of ``[1 − p, p]``, which differs from ``ece`` (the positive-class ECE that
    torchmetrics' ``BinaryCalibrationError`` computes).

    Raises:
        ValueError: as ``top_label``, or bad n_bins / strategy.

    Example:
        >>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]])
        >>> round(ece_top_label(np.array([0, 2]), probs, n_bins=2), 4)
        0.1
    """
    b = _check_n_bins(n_bins)
    s = _check_strategy(strategy)
    correct, conf = top_label(labels, probs)
    return _reliability(correct.astype(np.float64), conf, b, s).ece


# ---------------------------------------------------------------- proper scoring rules


def brier_multiclass(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score ``mean_i Σ_k (p_ik − 1[y_i = k])^2`` (range [0, 2]).

    Equals ``sklearn.metrics.brier_score_loss(labels, probs, labels=range(K),
    scale_by_half=False)``. For K = 2 it is twice the binary ``brier``.

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``top_label`` for 2-D probs.

    Example:
        >>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]])
        >>> round(brier_multiclass(np.array([0, 2]), probs), 4)
        0.38
    """
    lab, pr = _check_multiclass(labels, probs)
    if lab.size == 0:
        return float("nan")
    onehot = np.zeros_like(pr)
    onehot[np.arange(lab.size), lab] = 1.0
    return float(np.mean(np.sum((pr - onehot) ** 2, axis=1)))


def nll(y_true: np.ndarray, y_prob: np.ndarray, eps: float = 1e-12) -> float:
    """Binary negative log-likelihood (log loss, natural log).

    FORMULA: ``mean_i −[y_i log p_i + (1 − y_i) log(1 − p_i)]`` with p clipped to
    ``[eps, 1 − eps]`` (so a confident wrong prediction costs at most −log(eps) ≈ 27.6).
    Equals ``sklearn.metrics.log_loss(y_true, y_prob, labels=[0, 1])`` whenever no probability
    lies within eps of 0 or 1 (sklearn clips at machine epsilon instead).

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``reliability_bins``, or eps outside (0, 0.5).

    Example:
        >>> round(nll(np.array([1, 0]), np.array([0.8, 0.4])), 4)
        0.367
    """
    e = _check_eps(eps)
    y, p = _check_binary(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, e, 1.0 - e)
    return float(-np.mean(xlogy(y, p) + xlogy(1.0 - y, 1.0 - p)))


def nll_multiclass(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Multi-class negative log-likelihood ``mean_i −log p_{i, y_i}``, p clipped below at eps.

    Equals ``sklearn.metrics.log_loss(labels, probs, labels=range(K))`` whenever the
    true-class probabilities are >= eps.

    EDGE CASES: no samples -> nan.

    Raises:
        ValueError: as ``top_label`` for 2-D probs, or eps outside (0, 0.5).

    Example:
        >>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]])
        >>> round(nll_multiclass(np.array([0, 2]), probs), 4)
        0.6365
    """
    e = _check_eps(eps)
    lab, pr = _check_multiclass(labels, probs)
    if lab.size == 0:
        return float("nan")
    p_true = pr[np.arange(lab.size), lab]
    return float(-np.mean(np.log(np.maximum(p_true, e))))
