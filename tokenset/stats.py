"""Summaries with intervals: mean +- std over runs (ddof 1), t intervals over seeds, bootstrap intervals over images.

Every "+-" this project reports is a sample standard deviation (ddof 1). A comparison of two arms is stated with
the interval of its paired difference; with fewer than two runs there is no interval (NaN), never a made-up one.
This module imports nothing else from tokenset.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import stats as _st

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["summarize", "summarize_columns", "paired_difference", "bootstrap_mean_ci"]


def _values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{what}: expected at least one value, got none")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: expected finite values, got {v.tolist()}")
    return v


def summarize(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Run-level values (one per seed) -> mean, std (ddof 1), n and the ``level`` t interval of the mean
    (NaN std and interval for a single run)."""
    v = _values(values, "values")
    n, mean = v.size, float(v.mean())
    if n < 2:
        return dict(mean=mean, std=math.nan, n=1, ci_low=math.nan, ci_high=math.nan)
    std = float(v.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return dict(mean=mean, std=std, n=n, ci_low=mean - half, ci_high=mean + half)


def summarize_columns(table: pd.DataFrame, by: str, columns: Sequence[str],
                      keys: Sequence[str] = ("mean", "std")) -> dict[object, dict[str, float]]:
    """Runs (one row each, e.g. per arm and seed) -> {group: {f"{column}_{key}": value}}: ``summarize`` of each
    column within each group of ``by`` (in order of appearance), keeping ``keys`` (mean, std, n, ci_low, ci_high)."""
    missing = [c for c in (by, *columns) if c not in getattr(table, "columns", ())]
    if missing:
        raise ValueError(f"table: expected columns {[by, *columns]}, missing {missing}")
    bad = [k for k in keys if k not in ("mean", "std", "n", "ci_low", "ci_high")]
    if bad:
        raise ValueError(f"keys: expected some of mean, std, n, ci_low, ci_high, got {bad}")
    return {group: {f"{col}_{k}": summarize(rows[col].to_numpy())[k] for col in columns for k in keys}
            for group, rows in table.groupby(by, sort=False)}


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      level: float = 0.95) -> dict[str, float]:
    """a - b paired by position (e.g. by seed): ``summarize`` of the differences."""
    va, vb = _values(a, "a"), _values(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"paired_difference: a and b need the same length, got {va.size} and {vb.size}")
    return summarize(va - vb, level)


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item ``values`` (e.g. per-image PSNR)."""
    v = _values(values, "values")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples: expected a positive int (bootstrap resamples), got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a confidence level in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
