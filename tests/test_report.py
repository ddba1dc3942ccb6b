"""Sentences that state a result: ``report.trend_sentence`` along a line of the capacity sweep."""

import math

import pandas as pd
import pytest

from tokenset.report import trend_sentence


def _table():
    # a 3 x 3 grid of (M, C) points; val_psnr grows with M and C, rFID falls with M but not monotonically with C
    rows = [dict(M=m, C=c, val_psnr=10 + m / 8 + c / 1024, rFID=100 - m + {64: 0, 256: 5, 1024: -3}[c])
            for m in (8, 16, 32) for c in (64, 256, 1024)]
    return pd.DataFrame(rows).set_index(["M", "C"])


COLUMN = [(8, 256), (16, 256), (32, 256)]
ROW = [(16, 64), (16, 256), (16, 1024)]


def test_trend_along_the_column_and_the_row():
    t = _table()
    assert trend_sentence(t, COLUMN, "val_psnr", "M", True) == (
        "val_psnr at C = 256 rises with M: 11.25 (M=8) -> 12.25 (M=16) -> 14.25 (M=32); +3.00 from M=8 to M=32 "
        "(better at the largest M); best at M=32.")
    assert trend_sentence(t, COLUMN, "rFID", "M", False) == (
        "rFID at C = 256 falls with M: 97.00 (M=8) -> 89.00 (M=16) -> 73.00 (M=32); -24.00 from M=8 to M=32 "
        "(better at the largest M); best at M=32.")
    assert trend_sentence(t, ROW, "rFID", "C", False) == (
        "rFID at M = 16 is not monotonic with C: 84.00 (C=64) -> 89.00 (C=256) -> 81.00 (C=1024); -3.00 from C=64 "
        "to C=1024 (better at the largest C); best at C=1024.")


def test_trend_direction_follows_higher_better():
    t = _table()
    # val_psnr rising is better; read as a lower-is-better score the same rise is not better, the best is the first
    s = trend_sentence(t, ROW, "val_psnr", "C", False)
    assert "rises with C" in s and "(not better at the largest C)" in s and s.endswith("best at C=64.")
    flat = t.assign(val_psnr=12.0)
    s = trend_sentence(flat, ROW, "val_psnr", "C", True)  # no change: neither rises nor falls, not better
    assert "is not monotonic" in s and "+0.00 from C=64" in s and "(not better" in s and s.endswith("best at C=64.")


def test_trend_of_one_point_and_of_a_missing_value():
    t = _table()
    assert trend_sentence(t, [(16, 256)], "val_psnr", "C", True) == \
        "val_psnr at M = 16: 12.25 (C=256) (one point, no trend)."
    t.loc[(16, 256), "rFID"] = math.nan  # e.g. gFID off the centre row: stated, not hidden
    assert "nan (C=256)" in trend_sentence(t, ROW, "rFID", "C", False)


def test_trend_rejects_bad_input():
    t = _table()
    with pytest.raises(ValueError, match="var: expected 'M' or 'C'"):
        trend_sentence(t, ROW, "val_psnr", "N", True)
    with pytest.raises(ValueError, match="no column 'gFID': expected one of \\['val_psnr', 'rFID'\\]"):
        trend_sentence(t, ROW, "gFID", "C", False)
    with pytest.raises(ValueError, match="indexed by \\(M, C\\)"):
        trend_sentence(t.reset_index(), ROW, "val_psnr", "C", True)
    with pytest.raises(ValueError, match="points \\[\\(16, 512\\)\\] are not in values_by_point"):
        trend_sentence(t, ROW + [(16, 512)], "val_psnr", "C", True)
    with pytest.raises(ValueError, match="increasing C with M fixed"):
        trend_sentence(t, ROW[::-1], "val_psnr", "C", True)
    with pytest.raises(ValueError, match="increasing M with C fixed"):
        trend_sentence(t, ROW, "val_psnr", "M", True)  # the row varies C, not M
    with pytest.raises(ValueError, match="one or more \\(M, C\\) points"):
        trend_sentence(t, [], "val_psnr", "C", True)
