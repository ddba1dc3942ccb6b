"""tokenset.stats: ddof-1 summaries, t intervals over seeds, bootstrap intervals over images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenset.stats import bootstrap_mean_ci, paired_difference, summarize, summarize_columns


def test_summarize_is_ddof1_with_a_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2)
    assert s["ci_low"] == pytest.approx(2.0 - half) and s["ci_high"] == pytest.approx(2.0 + half)


def test_one_run_has_no_interval():
    s = summarize([5.0])
    assert s["mean"] == 5.0 and math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])


def test_t_interval_covers_the_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = sum(s["ci_low"] <= 0.0 <= s["ci_high"] for s in (summarize(rng.normal(size=3)) for _ in range(2000)))
    assert 0.93 < hits / 2000 < 0.97  # binomial sd ~0.005 at 2000 draws


def test_paired_difference_pairs_by_position():
    d = paired_difference([10.0, 11.0, 12.0], [9.0, 10.5, 11.0])
    assert d["mean"] == pytest.approx(np.mean([1.0, 0.5, 1.0])) and d["ci_low"] > 0
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])


def test_bootstrap_interval_brackets_the_mean_and_is_deterministic():
    v = np.random.default_rng(1).normal(20.0, 2.0, size=500)
    lo, hi = bootstrap_mean_ci(v, seed=3)
    assert lo < v.mean() < hi and hi - lo < 0.6  # ~4 standard errors of 0.09
    assert (lo, hi) == bootstrap_mean_ci(v, seed=3)
    u = np.arange(100, dtype=float)  # close to the normal interval
    lo, hi = bootstrap_mean_ci(u, resamples=500, seed=3)
    se = u.std(ddof=1) / 10
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.25 * 2 * 1.96 * se
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level: expected a confidence level"):
        bootstrap_mean_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="resamples: expected a positive int"):
        bootstrap_mean_ci([1.0, 2.0], resamples=0)


@pytest.mark.parametrize("bad, match", [([], "at least one value"), ([1.0, float("nan")], "finite")])
def test_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        summarize(bad)


def test_summarize_columns_by_group():
    import pandas as pd
    runs = pd.DataFrame(dict(arm=["set", "set", "set", "ordered", "ordered"], psnr=[19.0, 19.2, 19.1, 18.0, 18.4],
                             t=[1.0, 2.0, 3.0, 4.0, 4.0]))
    out = summarize_columns(runs, "arm", ["psnr", "t"])
    assert list(out) == ["set", "ordered"]
    assert out["set"]["psnr_mean"] == pytest.approx(19.1) and out["set"]["psnr_std"] == pytest.approx(0.1)
    assert out["ordered"]["t_std"] == 0.0 and set(out["set"]) == {"psnr_mean", "psnr_std", "t_mean", "t_std"}
    assert summarize_columns(runs, "arm", ["psnr"], keys=["n"])["ordered"] == {"psnr_n": 2}
    with pytest.raises(ValueError, match="missing \\['ssim'\\]"):
        summarize_columns(runs, "arm", ["ssim"])
    with pytest.raises(ValueError, match="keys: expected some of"):
        summarize_columns(runs, "arm", ["psnr"], keys=["median"])
