"""Verdicts on the paper's claims, from the tables the pipeline wrote (stage ``claims``, results/tables/claims.md).

Each claim is read from one stage's committed table and judged by a rule fixed here, before the numbers are seen:

- a *directional* claim (the paper says A beats B) is **reproduced** when the 95% interval of A minus B (in the
  paper's direction) lies above 0, **not reproduced** when it lies below 0, and **inconclusive at this scale**
  otherwise;
- a *non-inferiority* claim (A is as good as B) is a directional one on A minus B plus a margin: reproduced when
  the interval of A minus B lies above -margin, not reproduced when it lies below;
- a comparison of independently trained runs needs at least ``MIN_RUNS`` of them per arm: with fewer, the verdict is
  inconclusive whatever the numbers say (one run of each arm says nothing about the spread between runs).

Intervals: t intervals over seeds for run-level numbers, bootstrap over images for per-image ones (the stage says
which). Every row names its source table, so a reader can check it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tokenset.stats import paired_difference, summarize

__all__ = ["REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "MIN_RUNS", "directional_verdict", "within_slope", "CLAIMS",
           "collect"]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this scale"
MIN_RUNS = 3
COLUMNS = ("claim", "paper", "ours", "interval", "verdict", "rule", "evidence", "source")


def _check_interval(low: float, high: float) -> None:
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
        raise TypeError(f"interval bounds must be numbers, got {low!r} and {high!r}")
    if not (math.isnan(low) or math.isnan(high)) and low > high:
        raise ValueError(f"interval: low {low} is above high {high}")


def directional_verdict(low: float, high: float, runs: int | None = None) -> str:
    """The interval [low, high] of an effect signed so that the paper's claim is > 0. ``runs``: independently
    trained runs per arm behind it (None: not a comparison of trained runs, e.g. a correlation over images)."""
    _check_interval(low, high)
    if runs is not None and runs < MIN_RUNS:
        return INCONCLUSIVE
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    return REPRODUCED if low > 0 else NOT_REPRODUCED if high < 0 else INCONCLUSIVE


def _read_csv(results: Path, name: str, columns: set[str]) -> pd.DataFrame:
    path = results / "tables" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table missing; the stage that writes it must run before the claims")
    table = pd.read_csv(path)
    if not columns <= set(table.columns):
        raise ValueError(f"{path}: expected columns {sorted(columns)}, found {sorted(table.columns)}")
    return table


def _row(claim: str, paper: str, ours: str, interval: str, verdict: str, rule: str, evidence: str,
         source: str) -> dict[str, str]:
    return dict(zip(COLUMNS, (claim, paper, ours, interval, verdict, rule, evidence, source)))


def _interval(d: dict[str, float], scale: float = 1.0, unit: str = "") -> str:
    if math.isnan(d["ci_low"]):
        return "n/a (one run)"
    return f"[{scale * d['ci_low']:+.2f}, {scale * d['ci_high']:+.2f}]{unit}"


# ------------------------------------------------------------------------------------------------- the claims


def order_claim(results: Path) -> list[dict[str, str]]:
    """Claim 1: decoding does not depend on the tokens' order (the set decoder sees no latent positions)."""
    table = _read_csv(results, "permutation", {"arm", "order", "val_psnr", "changed_pixels"})
    spread_path = results / "permutation" / "metrics.json"
    permutation = json.loads(spread_path.read_text()) if spread_path.is_file() else {}
    spread = permutation.get("spread", {})
    s, o = table[table.arm == "set"], table[table.arm == "ordered"]
    if s.empty or o.empty:
        raise ValueError(f"{results}/tables/permutation.csv: expected rows of arms 'set' and 'ordered'")
    set_range = float(s.val_psnr.max() - s.val_psnr.min())
    ordered_drop = float(o.loc[o.order == "original", "val_psnr"].max() - o.val_psnr.min())
    pixel = spread.get("set", {}).get("max", float("nan"))
    invariant = set_range < 0.01 and float(s.changed_pixels.max()) < 1e-3
    verdict = (REPRODUCED if invariant and ordered_drop > 0.5 else NOT_REPRODUCED if set_range >= 0.1
               else INCONCLUSIVE)
    perms = spread.get("set", {}).get("permutations")
    random = permutation.get("random_permutations", {})
    loss, interval = "", "exact (a property of the decoder: no sampling)"
    if {"set", "ordered"} <= set(random):
        r, o_r = random["set"], random["ordered"]
        loss = (f"; under random permutations ({o_r['images']} images x {o_r['permutations']}) the set loses "
                f"{r['psnr_drop_mean']:.1e} dB, the ordered control {o_r['psnr_drop_mean']:.2f} dB")
        interval += f"; ordered control's loss [{o_r['ci_low']:.2f}, {o_r['ci_high']:.2f}] dB (bootstrap over images)"
    return [_row(
        "1. Order does not matter", "rFID 3.62 in all 5 orders",
        f"set: val PSNR range {set_range:.1e} dB over {len(s)} orders, {float(s.changed_pixels.max()):.1e} of uint8 "
        f"pixels change; largest pixel change over {perms} random permutations {pixel:.1e}; ordered control loses "
        f"up to {ordered_drop:.2f} dB{loss}", interval, verdict,
        "reproduced if the set's PSNR range < 0.01 dB and < 0.1% of pixels change, while the ordered control "
        "loses > 0.5 dB (the test can see order); not reproduced if the range is >= 0.1 dB; else inconclusive",
        f"{len(s)} orders x all val images; one tokenizer per arm",
        "permutation")]


def tokenizer_claim(results: Path) -> list[dict[str, str]]:
    """A set tokenizer reconstructs as well as the same model with latent positions (the ordered control)."""
    runs = _read_csv(results, "tokenizer_runs", {"arm", "seed", "val_psnr"})
    wide = runs.pivot_table(index="seed", columns="arm", values="val_psnr").dropna()
    d = paired_difference(wide["set"].to_numpy(), wide["ordered"].to_numpy())
    verdict = directional_verdict(d["ci_low"] + 0.5, d["ci_high"] + 0.5, runs=d["n"])  # non-inferiority at 0.5 dB
    return [_row(
        "0. A set reconstructs as well as a sequence", "TokenSet rFID on par with 1D tokenizers (Table 1)",
        f"set {wide['set'].mean():.2f} dB vs ordered {wide['ordered'].mean():.2f} dB val PSNR; set minus ordered "
        f"{d['mean']:+.2f} dB", _interval(d, unit=" dB"), verdict,
        "non-inferiority: reproduced if the 95% t interval of set minus ordered over seeds lies above -0.5 dB, not "
        "reproduced if below", f"{d['n']} seeds per arm",
        "tokenizer_runs")]


def ablation_claims(results: Path) -> list[dict[str, str]]:
    """Claim 2: the set decoder beats pooling (mean, PMA) and matching (Hungarian, Chamfer) decoders: set minus
    each arm's val PSNR, paired by seed (``ablation_runs``: one row per arm and seed)."""
    runs = _read_csv(results, "ablation_runs", {"arm", "seed", "val_psnr", "steps"})
    wide = runs.pivot_table(index="seed", columns="arm", values="val_psnr")
    if "set" not in wide:
        raise ValueError(f"{results}/tables/ablation_runs.csv: expected runs of the arm 'set'")
    steps = int(runs["steps"].max())
    rows = []
    for arm in [a for a in wide.columns if a not in ("set", "ordered")]:
        pair = wide[["set", arm]].dropna()
        d = paired_difference(pair["set"].to_numpy(), pair[arm].to_numpy())
        rows.append(_row(
            f"2. Set beats {arm}", "argued in words (section 3)",
            f"set {pair['set'].mean():.2f} dB vs {arm} {pair[arm].mean():.2f} dB val PSNR after {steps} steps; set "
            f"minus {arm} {d['mean']:+.2f} dB", _interval(d, unit=" dB"), directional_verdict(
                d["ci_low"], d["ci_high"], runs=d["n"]),
            "directional: the 95% t interval of set minus arm over seeds (paired) above 0; fewer than "
            f"{MIN_RUNS} seeds: inconclusive", f"{d['n']} seed(s) per arm, the study model", "ablation_runs"))
    return rows


def robustness_claims(results: Path) -> list[dict[str, str]]:
    """Claim 3: a set tokenizer keeps more of its tokens than an ordered one under input noise (Table 2)."""
    table = _read_csv(results, "robustness_seeds", {"snr_db", "measured_snr_db", "set", "ordered", "diff",
                                                    "ci_low", "ci_high", "seeds"})
    paper = {40.0: (89.5, 83.4), 30.0: (68.4, 55.4), 20.0: (38.9, 21.4), 10.0: (13.9, 3.8), 1.0: (7.9, 1.4)}
    rows = []
    for r in table.itertuples():
        p = paper.get(float(r.snr_db))
        d = {"ci_low": r.ci_low, "ci_high": r.ci_high}
        rows.append(_row(
            f"3. More tokens survive noise at {r.snr_db:g} dB",
            f"TokenSet {p[0]}% vs TiTok {p[1]}%" if p else "-",
            f"set {100 * r.set:.1f}% vs ordered {100 * r.ordered:.1f}% (seen SNR {r.measured_snr_db:.1f} dB); "
            f"{100 * r.diff:+.1f} points", _interval(d, 100, " points"),
            directional_verdict(r.ci_low, r.ci_high, int(r.seeds)),
            "directional: the 95% t interval of set minus ordered over seeds above 0", f"{int(r.seeds)} seeds per "
            "arm, the reference validation images each", "robustness_seeds"))
    return rows


def allocation_claim(results: Path, measure: str = "png_bytes") -> list[dict[str, str]]:
    """Claim 4: the number of distinct codes follows image complexity (figures only in the paper)."""
    table = _read_csv(results, "allocation", {"class", "measure", "rho", "lo", "hi", "n"})
    row = table[(table["class"] == "all") & (table["measure"] == measure)]
    if len(row) != 1:
        raise ValueError(f"{results}/tables/allocation.csv: expected one row of class 'all', measure {measure!r}")
    r = row.iloc[0]
    per_class = table[(table["class"] != "all") & (table["measure"] == measure)]
    positive = int((per_class["lo"] > 0).sum())
    return [_row(
        "4. Capacity follows complexity", "figures only (more distinct tokens for complex images)",
        f"Spearman rho of distinct codes vs {measure}: {r.rho:+.3f} over {int(r.n)} images; interval above 0 in "
        f"{positive} of {len(per_class)} classes", f"[{r.lo:+.3f}, {r.hi:+.3f}]",
        directional_verdict(float(r.lo), float(r.hi)),
        f"directional: the 95% bootstrap interval (over images) of rho with {measure} (fixed in advance) above 0",
        "one tokenizer (the first seed), all val images", "allocation")]


# claim 5, one row per axis of Table 6: (axis column, the other column, claim, the paper's numbers)
_SWEEP_AXES = (
    ("C", "M", "5. More codes reconstruct better",
     "rFID falls with C at M = 128 (Table 6: 6.51 / 3.62 / 2.74 at C = 1024 / 2048 / 4096; 2.35 at 8192)"),
    ("M", "C", "5. More tokens reconstruct better",
     "rFID falls with M at C = 4096 (Table 6: 5.54 / 3.54 / 2.74 / 2.60 at M = 32 / 64 / 128 / 256; 2.88 at 512)"),
)


def within_slope(runs: pd.DataFrame, size: str, other: str, value: str = "val_psnr") -> float:
    """The least-squares slope of ``value`` against log2 ``size`` with one intercept per value of ``other`` (a
    change per doubling, within rows of the grid; rows with one size add nothing); NaN if no row varies ``size``."""
    x = runs[size].astype(float).map(math.log2)
    y = runs[value].astype(float)
    xs = x - x.groupby(runs[other]).transform("mean")
    ys = y - y.groupby(runs[other]).transform("mean")
    denom = float((xs * xs).sum())
    return float((xs * ys).sum()) / denom if denom > 0 else math.nan


def sweep_claim(results: Path) -> list[dict[str, str]]:
    """Claim 5, per axis (Table 6 varies C at fixed M and M at fixed C): does val PSNR rise with the codebook size C
    and with the number of tokens M? Per seed (``sweep_runs``: one row per point and seed), the slope of val PSNR
    against log2 of the size within the grid's rows (``within_slope``), with a t interval over seeds; and, reported,
    the Spearman rho along the longest row (the centre row / column of a cross). The verdict is the slope's: with
    3 sizes a per-seed rho takes 4 values only, so equal seeds collapse its t interval to a point."""
    runs = _read_csv(results, "sweep_runs", {"M", "C", "seed", "val_psnr", "steps"})
    rows = []
    for size, other, claim, paper in _SWEEP_AXES:
        lengths = runs.groupby(other)[size].nunique()
        line = lengths.idxmax() if len(lengths) else None  # the longest row: the centre of a cross grid
        on_line = runs[runs[other] == line]
        slopes, rhos = [], []
        for seed, g in runs.groupby("seed"):
            slope = within_slope(g, size, other)
            if not math.isnan(slope):
                slopes.append(slope)
            h = on_line[on_line["seed"] == seed]
            if h[size].nunique() > 2:
                rhos.append(float(h[[size, "val_psnr"]].corr(method="spearman").iloc[0, 1]))
        d = summarize(slopes) if slopes else dict(mean=math.nan, ci_low=math.nan, ci_high=math.nan, n=0)
        sizes = sorted(int(v) for v in runs[size].unique())
        rho = (f"; Spearman rho with {size} at {other} = {line}: {sum(rhos) / len(rhos):+.2f} (per seed "
               f"{min(rhos):+.2f} to {max(rhos):+.2f})" if rhos else "")
        rows.append(_row(
            claim, paper,
            f"val PSNR {d['mean']:+.2f} dB per doubling of {size} ({size} = {', '.join(map(str, sizes))}; mean over "
            f"{len(slopes)} seed(s)){rho}; {int(runs['steps'].max())} steps per run", _interval(d, unit=" dB"),
            directional_verdict(d["ci_low"], d["ci_high"], runs=d["n"]),
            f"directional: the 95% t interval over seeds of the per-seed slope of val PSNR against log2 {size} "
            f"(least squares, one intercept per {other}) above 0; fewer than {MIN_RUNS} seeds: inconclusive",
            f"{d['n']} seed(s) per point, the study model", "sweep_runs"))
    return rows


def generation_claims(results: Path) -> list[dict[str, str]]:
    """Claim 6: FSDD beats discrete diffusion and autoregression on the same tokens (Table 5: 5.56 / 6.23 / 6.55).
    gfid_runs holds one row per trained generator and seed; runs of the same seed are paired."""
    runs = _read_csv(results, "gfid_runs", {"generator", "seed", "fid"})
    wide = runs.pivot_table(index="seed", columns="generator", values="fid")
    if "fsdd" not in wide:
        raise ValueError(f"{results}/tables/gfid_runs.csv: no rows of generator 'fsdd'")
    paper = {"masked_sorted": "6.23 (discrete diffusion)", "ar_sorted": "6.55 (autoregressive)"}
    missing = [g for g in paper if g not in wide]
    if missing:
        raise ValueError(f"{results}/tables/gfid_runs.csv: no rows of generator(s) {missing}; expected fsdd, "
                         f"{', '.join(paper)}")
    accuracy = (runs.groupby("generator").class_accuracy.mean() if "class_accuracy" in runs else pd.Series(dtype=float))
    rows = []
    for other in paper:
        pair = wide[["fsdd", other]].dropna()
        if pair.empty:
            raise ValueError(f"{results}/tables/gfid_runs.csv: no seed has both a trained fsdd and {other}")
        d = paired_difference(pair[other].to_numpy(), pair["fsdd"].to_numpy())  # > 0: FSDD better
        acc = (f"; class accuracy {accuracy['fsdd']:.0%} vs {accuracy[other]:.0%}"
               if {"fsdd", other} <= set(accuracy.dropna().index) else "")
        rows.append(_row(
            f"6. FSDD beats {other}", f"gFID 5.56 vs {paper[other]}",
            f"FID {pair['fsdd'].mean():.1f} vs {pair[other].mean():.1f} ({other} minus FSDD {d['mean']:+.1f}){acc}",
            _interval(d), directional_verdict(d["ci_low"], d["ci_high"], runs=d["n"]),
            f"directional: the 95% t interval over seeds of {other} minus FSDD FID (paired by seed) above 0; "
            f"fewer than {MIN_RUNS} trained generators each: inconclusive",
            f"{d['n']} trained generator(s) each, same tokens, width, depth and steps; FID on the features of "
            "the extractor named in gfid.md", "gfid_runs"))
    return rows


CLAIMS: tuple[Callable[[Path], list[dict[str, str]]], ...] = (
    tokenizer_claim, order_claim, ablation_claims, robustness_claims, allocation_claim, sweep_claim,
    generation_claims)


def collect(results: str | Path) -> pd.DataFrame:
    """Every claim's verdict from the tables under ``results`` (results/ or results/smoke): one row per claim with
    the columns ``COLUMNS``."""
    results = Path(results)
    if not (results / "tables").is_dir():
        raise FileNotFoundError(f"{results}/tables: no tables; run the pipeline's stages first")
    rows: list[dict[str, Any]] = []
    for claim in CLAIMS:
        rows += claim(results)
    return pd.DataFrame(rows, columns=list(COLUMNS))
