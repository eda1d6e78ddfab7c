"""Temperature scaling, fitted on a calibration split only (Guo et al. 2017).

Binary / multi-label (one temperature per target): ``p_T = σ(z / T)`` with ``z = logit(p)``;
multi-class: ``p_T = softmax(log p / T)`` (one temperature). ``T`` minimises the NLL on the
calibration split (bounded search over ``log T`` in [log 0.05, log 20]); ``T > 1`` softens an
overconfident model. Probabilities are clipped to [1e-7, 1 - 1e-7] before the logit.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax

EPS = 1e-7
LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))


def _binary_logits(prob: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(prob, np.float64), EPS, 1 - EPS))


def _binary_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    # log(1 + exp(-s)) for y = 1, log(1 + exp(s)) for y = 0, computed stably
    return float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -s, s))))


def fit_temperature_binary(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """NLL-optimal temperature for one binary target (1.0 when one class is present)."""
    y = np.asarray(y_true, np.float64)
    if y.size == 0 or y.min() == y.max():
        return 1.0
    z = _binary_logits(y_prob)
    res = minimize_scalar(lambda lt: _binary_nll(z, y, float(np.exp(lt))), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply_temperature_binary(y_prob: np.ndarray, temperature: float) -> np.ndarray:
    """``σ(logit(p) / T)``."""
    return expit(_binary_logits(y_prob) / float(temperature))


def fit_temperature_multiclass(labels: np.ndarray, probs: np.ndarray) -> float:
    """NLL-optimal single temperature for (N, K) softmax probabilities."""
    lab = np.asarray(labels, np.int64)
    logp = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0))

    def nll(lt: float) -> float:
        return float(-np.mean(log_softmax(logp / np.exp(lt), axis=1)[np.arange(len(lab)), lab]))

    res = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply_temperature_multiclass(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0))
    return softmax(logp / float(temperature), axis=1)


def entropy_binary(y_prob: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, ``-p ln p - (1-p) ln(1-p)`` (0 at p in {0, 1})."""
    p = np.clip(np.asarray(y_prob, np.float64), EPS, 1 - EPS)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))
