"""AUROC bootstrap CI: medfail's vectorised resampling vs a loop of sklearn's roc_auc_score.

n = 10,000 samples, 1,000 resamples; both sides use the identical index matrix
(``bootstrap_indices``) and the same percentile interval; the intervals must agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import best_of, ratio

N, B, REPS = 10_000, 1000, 2


def run() -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from medfail.metrics.bootstrap import auroc_bootstrap, bootstrap_indices, percentile_ci

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    score = rng.normal(size=N) + 0.8 * y  # continuous scores: no ties, the costliest case
    idx = bootstrap_indices(N, B, seed=0)

    def medfail() -> tuple[float, float]:
        return percentile_ci(auroc_bootstrap(y, score, idx))

    def sklearn() -> tuple[float, float]:
        return percentile_ci(np.array([roc_auc_score(y[row], score[row]) for row in idx]))

    ci_medfail, ci_sklearn = medfail(), sklearn()
    np.testing.assert_allclose(ci_medfail, ci_sklearn, rtol=1e-12, atol=0)
    diff = np.abs(auroc_bootstrap(y, score, idx)
                  - np.array([roc_auc_score(y[row], score[row]) for row in idx])).max()
    secs = best_of({"medfail": medfail, "sklearn_loop": sklearn}, reps=REPS, warmup=False)
    return {
        "data": f"n = {N}, {B} resamples, continuous scores, ~50 % positives",
        "timing": f"best of {REPS} interleaved rounds (each includes the percentile CI)",
        "seconds": {k: round(v, 4) for k, v in secs.items()},
        "ci_medfail": list(ci_medfail), "ci_sklearn": list(ci_sklearn),
        "max_abs_auc_difference": float(diff),
        "ci_equal": "rtol 1e-12 (identical up to float rounding of the final division)",
        "speedup": ratio(secs["sklearn_loop"], secs["medfail"]),
    }
