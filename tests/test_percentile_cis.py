"""percentile_cis: row by row the same floats as percentile_ci (NaN rule, tiny B, blocks)."""

from __future__ import annotations

import numpy as np
import pytest

import medfail.metrics.bootstrap as bs
from medfail.metrics.bootstrap import max_undefined, percentile_ci, percentile_cis


def _rowwise(stats: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = [percentile_ci(row, alpha) for row in stats]
    return (np.array([p[0] for p in pairs], dtype=np.float64),
            np.array([p[1] for p in pairs], dtype=np.float64))


def _assert_same(stats: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = percentile_cis(stats, alpha)
    ref_lo, ref_hi = _rowwise(stats, alpha)
    assert lo.shape == hi.shape == (stats.shape[0],)
    assert lo.dtype == hi.dtype == np.float64
    # exact equality (NaN == NaN at the same rows), not a tolerance
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)
    return lo, hi


def _mixed(rng: np.random.Generator, n_rows: int, n_cols: int, alpha: float) -> np.ndarray:
    """Random rows; some with NaNs just under / at / just over the max_undefined rule."""
    stats = rng.normal(size=(n_rows, n_cols))
    limit = max_undefined(n_cols, alpha)
    for r in range(n_rows):
        kind = r % 6
        k = {0: 0, 1: 1, 2: limit, 3: limit + 1, 4: n_cols, 5: rng.integers(0, n_cols + 1)}[kind]
        stats[r, rng.choice(n_cols, size=min(int(k), n_cols), replace=False)] = np.nan
    return stats


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.32])
@pytest.mark.parametrize("n_cols", [1000, 200, 41, 50])
def test_equals_percentile_ci_row_by_row_random_and_partially_nan(alpha: float,
                                                                  n_cols: int) -> None:
    rng = np.random.default_rng(n_cols)
    stats = _mixed(rng, 60, n_cols, alpha)
    lo, hi = _assert_same(stats, alpha)
    limit = max_undefined(n_cols, alpha)
    n_nan = np.isnan(stats).sum(axis=1)
    # the rule itself: defined exactly when 0 <= #NaN <= limit and not all NaN
    defined = (n_nan <= limit) & (n_nan < n_cols)
    np.testing.assert_array_equal(np.isfinite(lo), defined)
    np.testing.assert_array_equal(np.isfinite(hi), defined)
    assert np.all(lo[defined] <= hi[defined])


def test_all_nan_constant_and_ties() -> None:
    stats = np.array([[np.nan] * 7, [3.25] * 7, [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0],
                      [-0.0, 0.0, -0.0, 0.0, 0.0, -0.0, 0.0]])
    lo, hi = _assert_same(stats)
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    assert lo[1] == hi[1] == 3.25


@pytest.mark.parametrize("n_cols", [1, 2, 3, 5])
def test_tiny_b(n_cols: int) -> None:
    rng = np.random.default_rng(n_cols)
    stats = rng.uniform(size=(12, n_cols))
    stats[::3, 0] = np.nan  # max_undefined is 0 here: these rows are NaN
    lo, hi = _assert_same(stats)
    assert np.isnan(lo[::3]).all() and np.isfinite(lo[1::3]).all()
    assert np.isnan(hi[::3]).all() and np.isfinite(hi[1::3]).all()


def test_integer_input_inf_and_empty_shapes() -> None:
    _assert_same(np.arange(60).reshape(3, 20) % 7)
    with_inf = np.random.default_rng(1).normal(size=(4, 50))
    with_inf[0, 3], with_inf[1, :2], with_inf[2, 5] = np.inf, -np.inf, np.nan
    with np.errstate(invalid="ignore"):  # inf - inf in numpy's interpolation, both sides
        _assert_same(with_inf)
    lo, hi = percentile_cis(np.zeros((0, 10)))
    assert lo.shape == hi.shape == (0,)
    lo, hi = percentile_cis(np.zeros((3, 0)))
    assert np.isnan(lo).all() and np.isnan(hi).all() and lo.shape == (3,)


def test_row_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = _mixed(np.random.default_rng(7), 50, 100, 0.05)
    whole = percentile_cis(stats)
    monkeypatch.setattr(bs, "_BLOCK_ELEMS", 300)  # 3 rows per block, 17 blocks
    blocked = percentile_cis(stats)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])
    _assert_same(stats)


def test_input_not_modified_and_validation() -> None:
    stats = _mixed(np.random.default_rng(3), 6, 30, 0.05)
    before = stats.copy()
    percentile_cis(stats)
    np.testing.assert_array_equal(stats, before)
    with pytest.raises(ValueError, match=r"stats must be 2-D"):
        percentile_cis(np.zeros(5))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        percentile_cis(np.zeros((2, 5)), alpha=0.0)
