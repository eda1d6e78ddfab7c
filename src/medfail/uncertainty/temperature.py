"""Temperature scaling (Guo et al. 2017) and confidences in logit space, without clipping.

Scores are float64. Where the model gave logits (``output="logits"``) runs store them
(``logit`` column of ``predictions/<condition>.parquet``) and everything here starts from them;
otherwise, and for averaged predictions (TTA, MC dropout, ensembles), from the stored
probabilities:

* binary log-odds ``z = log(p) − log1p(−p)``, no clipping: distinct probabilities keep
  distinct, ordered log-odds, and p = 0 / 1 exactly (a saturated float32 sigmoid) give z = ∓inf,
  tied only with each other (the former clip to [1e-7, 1 − 1e-7] tied every p < 1e-7);
* multi-class log-probabilities ``log p`` (−inf at p = 0), or the logits themselves.

Temperature scaling (fit and apply) needs finite scores: there z = ±inf counts as the float32
saturation point (``Z_SATURATED``: +17.33 = logit(1 − 2**-25), −103.97 = logit(2**-150), beyond
which float32 rounds p to exactly 1 / 0; the least extreme score consistent with p) or the most
extreme finite score, whichever is further out. Rankings keep the infinite scores.

Binary / multi-label (one temperature per target): ``p_T = σ(z / T)``; multi-class (one
temperature): ``p_T = softmax(s / T)`` with ``s`` the logits or log-probabilities. ``T``
minimises the NLL on the calibration split only, by a bounded search over ``log T`` in
[log 0.05, log 20] (``T_BOUNDS``); ``T > 1`` softens an overconfident model. A fitted T within
0.1 % of a bound (``temperature_at_bound``) is not an optimum but the end of the search: runs
warn about it.

Confidences (higher = more confident) that rank like the probabilities but never tie where the
scores differ: ``|z|`` for a binary target (the order of ``max(p, 1 − p)``, of ``−H(p)`` and,
for every T > 0, of ``|z| / T`` and ``max(p_T, 1 − p_T)``), and the log-odds of the predicted
class ``s_c − logsumexp_{k≠c} s_k`` for multi-class (the order of ``p_c``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logsumexp, softmax, xlog1py, xlogy

#: the temperature search interval, and its log
T_BOUNDS = (0.05, 20.0)
LOG_T_BOUNDS = (math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1]))
#: a fitted T whose log lies this close to a bound of the search sits on the bound
BOUND_ATOL_LOG = 1e-3
#: log-odds where float32 rounds p to exactly 0 / 1 (p = 2**-150, p = 1 − 2**-25): what infinite
#: scores count as in the temperature fit (or the most extreme finite score, if further out)
Z_SATURATED = (-150.0 * math.log(2.0), math.log1p(-(2.0 ** -25)) + 25.0 * math.log(2.0))


def _probs(prob: np.ndarray) -> np.ndarray:
    """float64 probabilities; NaN raises, values beyond [0, 1] (a probability model's rounding,
    within the output check's tolerance) count as 0 / 1."""
    p = np.asarray(prob, np.float64)
    if np.isnan(p).any():
        raise ValueError(f"probabilities contain {int(np.isnan(p).sum())} NaN value(s)")
    return np.clip(p, 0.0, 1.0)


def log_odds(prob: np.ndarray) -> np.ndarray:
    """``log(p) − log1p(−p)`` in float64, no clipping: −inf at p = 0, +inf at p = 1."""
    p = _probs(prob)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def finite_scores(s: np.ndarray) -> np.ndarray:
    """Scores for temperature scaling: −inf / +inf -> the float32 saturation point or the most
    extreme finite score, whichever is further out (monotone; finite scores unchanged)."""
    fin = s[np.isfinite(s)]
    lo = min(Z_SATURATED[0], float(fin.min())) if fin.size else Z_SATURATED[0]
    hi = max(Z_SATURATED[1], float(fin.max())) if fin.size else Z_SATURATED[1]
    return np.clip(s, lo, hi)


def _usable(logits: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if logits is None:
        return None
    z = np.asarray(logits, np.float64)
    return z if z.shape == shape and np.isfinite(z).all() else None


def binary_scores(prob: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """Binary log-odds: the stored logits when given and all finite, else ``log_odds(prob)``."""
    p = np.asarray(prob, np.float64)
    z = _usable(logits, p.shape)
    return z if z is not None else log_odds(p)


def multiclass_scores(probs: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """(N, K) scores whose softmax is the prediction: the logits when given and all finite,
    else ``log p`` (−inf at p = 0)."""
    p = np.asarray(probs, np.float64)
    z = _usable(logits, p.shape)
    if z is not None:
        return z
    with np.errstate(divide="ignore"):
        return np.log(_probs(p))


def binary_confidence(z: np.ndarray) -> np.ndarray:
    """``|z|``: ranks like ``max(p, 1 − p)`` and, for every T > 0, like ``max(p_T, 1 − p_T)``."""
    return np.abs(np.asarray(z, np.float64))


def class_log_odds(scores: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Log-odds of class ``cls[i]`` of row i: ``s_c − logsumexp_{k≠c} s_k`` (= log p_c −
    log(1 − p_c) for the softmax of ``s``, without rounding p_c to 1)."""
    s = np.asarray(scores, np.float64)
    idx = np.arange(s.shape[0])
    others = s.copy()
    others[idx, cls] = -np.inf
    return s[idx, cls] - logsumexp(others, axis=1)


def _binary_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    # log(1 + exp(-s)) for y = 1, log(1 + exp(s)) for y = 0, computed stably
    return float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -s, s))))


def binary_nll(y_true: np.ndarray, z: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of ``σ(z / T)`` computed from the scores (no probability is rounded or clipped)."""
    return _binary_nll(np.asarray(z, np.float64), np.asarray(y_true, np.float64),
                       float(temperature))


def fit_temperature_binary(y_true: np.ndarray, y_prob: np.ndarray,
                           logits: np.ndarray | None = None) -> float:
    """NLL-optimal temperature for one binary target (1.0 when one class is present)."""
    y = np.asarray(y_true, np.float64)
    if y.size == 0 or y.min() == y.max():
        return 1.0
    z = finite_scores(binary_scores(y_prob, logits))
    res = minimize_scalar(lambda lt: _binary_nll(z, y, float(np.exp(lt))), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def scale_binary(z: np.ndarray, temperature: float) -> np.ndarray:
    """``σ(z / T)`` in float64 from binary scores (±inf counted as in the fit)."""
    return expit(finite_scores(np.asarray(z, np.float64)) / float(temperature))


def scale_multiclass(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(s / T)`` row-wise in float64 from (N, K) scores (−inf counted as in the fit)."""
    return softmax(finite_scores(np.asarray(scores, np.float64)) / float(temperature), axis=1)


def apply_temperature_binary(y_prob: np.ndarray, temperature: float,
                             logits: np.ndarray | None = None) -> np.ndarray:
    """``σ(z / T)`` (float64) with z = ``binary_scores(y_prob, logits)``."""
    return scale_binary(binary_scores(y_prob, logits), temperature)


def fit_temperature_multiclass(labels: np.ndarray, probs: np.ndarray,
                               logits: np.ndarray | None = None) -> float:
    """NLL-optimal single temperature for (N, K) softmax probabilities (or their logits)."""
    lab = np.asarray(labels, np.int64)
    s = finite_scores(multiclass_scores(probs, logits))

    def nll(lt: float) -> float:
        return float(-np.mean(log_softmax(s / np.exp(lt), axis=1)[np.arange(len(lab)), lab]))

    res = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply_temperature_multiclass(probs: np.ndarray, temperature: float,
                                 logits: np.ndarray | None = None) -> np.ndarray:
    """``softmax(s / T)`` row-wise (float64), s = ``multiclass_scores(probs, logits)``."""
    return scale_multiclass(multiclass_scores(probs, logits), temperature)


def temperature_at_bound(temperature: float) -> str | None:
    """``"lower"`` / ``"upper"`` when T sits on that bound of the search (log within 1e-3),
    else None."""
    lt = math.log(float(temperature))
    if abs(lt - LOG_T_BOUNDS[0]) < BOUND_ATOL_LOG:
        return "lower"
    if abs(lt - LOG_T_BOUNDS[1]) < BOUND_ATOL_LOG:
        return "upper"
    return None


def temperature_warnings(temperatures: dict[str, float] | None) -> dict[str, str]:
    """``{target: message}`` for every fitted temperature on a bound of its search."""
    out = {}
    for target, t in (temperatures or {}).items():
        side = temperature_at_bound(t)
        if side is None:
            continue
        bound = T_BOUNDS[0] if side == "lower" else T_BOUNDS[1]
        why = ("the model's scores separate the calibration split's classes almost perfectly, "
               "so the NLL keeps falling as T shrinks" if side == "lower" else
               "confident mistakes on the calibration split outweigh its correct cases, so "
               "the NLL keeps falling as T grows towards p = 0.5 everywhere")
        out[target] = (f"temperature for {target!r} is {t:.4g}, on the {side} bound {bound:g} "
                       f"of its search ({why}); its temperature-scaled probabilities are not "
                       "an NLL optimum: read their ECE/NLL with care (the ranking, AURC and "
                       "the decisions do not depend on T)")
    return out


def entropy_binary(y_prob: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, ``−p ln p − (1 − p) ln(1 − p)``, float64 (0 at p in {0, 1});
    ``ln(1 − p)`` as ``log1p(−p)``, no clipping."""
    p = _probs(y_prob)
    return -(xlogy(p, p) + xlog1py(1.0 - p, -p))
