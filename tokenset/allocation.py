"""Capacity follows complexity (not measured in the paper): does a set tokenizer spend more distinct codes on
more complex images, and which image regions does each distinct code answer for?

Per image, from its token multiset (tokens (M,)): ``distinct`` = number of distinct codes, ``largest`` = the largest
multiplicity of one code (M - distinct + 1 at most). Complexity measures of the uint8 image (3, H, W):

- ``png_bytes``: size of the lossless PNG written by PIL at ``compress_level`` (default 9), RGB, no metadata.
- ``gradient``: mean over the (H-1) x (W-1) grid of sqrt(dx^2 + dy^2), forward differences of the grayscale
  image Y = (0.299 R + 0.587 G + 0.114 B) / 255 in [0, 1]; 0 for a constant image.
- ``background``: share of pixels whose colour lies within ``tolerance`` (uint8 units, max over channels) of the
  image's most frequent RGB colour (ties: the smallest 0xRRGGBB value). High = much flat background.

Spearman's rho of ``distinct`` with each measure, with a seeded, vectorised percentile bootstrap interval.

Token-level view (``code_influence``): decode the full multiset; for each distinct code u, decode the multiset with
ALL copies of u removed (M - n_u tokens) and take |full - without u| per pixel (mean over channels). The set
tokenizer's decoder gives its latent tokens no position, so it accepts any number of tokens (it was trained on
exactly M, so fewer tokens are off its training distribution: read the maps as relative, not absolute). The
ordered control's decoder adds one position per token and cannot decode fewer than M.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import stats

from tokenset.bijection import counts_to_set, set_to_counts
from tokenset.tokenizer import SetTokenizer

__all__ = ["MEASURES", "code_stats", "png_bytes", "gradient_magnitude", "background_fraction", "complexity",
           "spearman_ci", "correlation_table", "CodeInfluence", "code_influence", "TABLE_NOTE"]

MEASURES = ("png_bytes", "gradient", "background")

TABLE_NOTE = (
    "Spearman rank correlation of the number of distinct codes in an image's token set (set tokenizer) with "
    "complexity measures of the image: png_bytes (lossless PNG size, PIL compress_level {compress_level}); "
    "gradient (mean finite-difference gradient magnitude of the grayscale image in [0, 1]); background (share of "
    "pixels within {tolerance} uint8 levels, max over channels, of the image's most frequent colour). "
    "lo/hi: {level:.0%} percentile bootstrap interval ({n_boot} resamples of images, seed {seed}); "
    "p: scipy.stats.spearmanr two-sided p-value. class 'all': every validation image. "
    "A positive rho with png_bytes/gradient and a negative one with background means capacity follows complexity."
)


def _check_uint8_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3 or images.shape[0] == 0:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a non-empty uint8 tensor (N, 3, H, W), got {got}")


def _check_tokens(tokens: torch.Tensor, codebook_size: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point \
            or tokens.dtype.is_complex or tokens.dtype == torch.bool or 0 in tokens.shape:
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens: expected a non-empty integer tensor (N, M), got {got}")
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size: expected a positive int, got {codebook_size!r}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"tokens: expected codes in [0, {codebook_size}), got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------------------------- per image


def code_stats(tokens: torch.Tensor, codebook_size: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (N, M) integer in [0, C) -> (distinct (N,) int64, largest multiplicity (N,) int64), from the count
    vectors of ``bijection.set_to_counts`` (``chunk`` rows at a time)."""
    _check_tokens(tokens, codebook_size)
    distinct, largest = [], []
    for lo in range(0, len(tokens), max(1, chunk)):
        counts = set_to_counts(tokens[lo:lo + chunk].long(), codebook_size)
        distinct.append((counts > 0).sum(dim=1))
        largest.append(counts.max(dim=1).values)
    return torch.cat(distinct), torch.cat(largest)


def png_bytes(images: torch.Tensor, compress_level: int = 9) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N,) int64: bytes of each as an RGB PNG written by PIL at ``compress_level``."""
    _check_uint8_images(images)
    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level: expected an int in [0, 9], got {compress_level!r}")
    arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
    sizes = np.empty(len(arrays), dtype=np.int64)
    for i, a in enumerate(arrays):  # one PNG per image
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=compress_level)
        sizes[i] = buf.tell()
    return sizes


def gradient_magnitude(images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N,) float64: mean sqrt(dx^2 + dy^2) of the grayscale image in [0, 1]
    (forward differences on the common (H-1) x (W-1) grid). Needs H, W >= 2."""
    _check_uint8_images(images)
    if images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f"images: expected H, W >= 2 for finite differences, got shape {tuple(images.shape)}")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    y = (images.double() * weights).sum(dim=1) / 255.0  # (N, H, W)
    dx = y[:, :-1, 1:] - y[:, :-1, :-1]
    dy = y[:, 1:, :-1] - y[:, :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt().flatten(1).mean(dim=1).numpy()


def background_fraction(images: torch.Tensor, tolerance: int = 8) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N,) float64: share of pixels whose colour is within ``tolerance`` (max over
    channels of |difference|, uint8 units) of the image's most frequent RGB colour (ties: smallest 0xRRGGBB)."""
    _check_uint8_images(images)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 0 <= tolerance <= 255:
        raise ValueError(f"tolerance: expected an int in [0, 255] (uint8 levels), got {tolerance!r}")
    n = images.shape[0]
    x = images.long().flatten(2)  # (N, 3, P)
    packed = (x[:, 0] << 16) | (x[:, 1] << 8) | x[:, 2]  # (N, P)
    s = packed.sort(dim=1).values
    new_run = torch.ones_like(s, dtype=torch.bool)
    new_run[:, 1:] = s[:, 1:] != s[:, :-1]
    run_id = new_run.long().cumsum(dim=1) - 1  # (N, P)
    p = s.shape[1]
    run_len = torch.zeros(n, p, dtype=torch.long).scatter_add_(1, run_id, torch.ones_like(run_id))
    run_value = torch.zeros(n, p, dtype=torch.long).scatter_(1, run_id, s)
    mode = run_value.gather(1, run_len.argmax(dim=1, keepdim=True))  # (N, 1); argmax: first = smallest colour
    mode_rgb = torch.stack([(mode >> 16) & 255, (mode >> 8) & 255, mode & 255], dim=1)  # (N, 3, 1)
    close = (x - mode_rgb).abs().amax(dim=1) <= tolerance  # (N, P)
    return close.double().mean(dim=1).numpy()


def complexity(images: torch.Tensor, compress_level: int = 9, tolerance: int = 8) -> pd.DataFrame:
    """uint8 images (N, 3, H, W) -> DataFrame with one column per ``MEASURES`` entry, N rows."""
    return pd.DataFrame(dict(png_bytes=png_bytes(images, compress_level), gradient=gradient_magnitude(images),
                             background=background_fraction(images, tolerance)))


# --------------------------------------------------------------------------------------------- correlation


def _rank_rows(a: np.ndarray) -> np.ndarray:
    return stats.rankdata(a, axis=1)  # average ranks on ties, as spearmanr


def spearman_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> dict[str, float]:
    """Spearman's rho of paired samples x, y (n,) with a percentile bootstrap interval.

    The ``n_boot`` resamples of the n pairs are drawn at once from ``numpy.random.default_rng(seed)`` and ranked
    row-wise (average ranks on ties); a resample in which x or y is constant has no rho and is left out
    (``valid`` counts the others). Returns dict(rho, lo, hi, p, n, valid); rho and p from scipy.stats.spearmanr
    (nan if x or y is constant).
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1 or len(xa) != len(ya):
        raise ValueError(f"x, y: expected two 1-D arrays of equal length, got shapes {xa.shape} and {ya.shape}")
    if len(xa) < 3:
        raise ValueError(f"x, y: expected at least 3 pairs for a rank correlation, got {len(xa)}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x, y: expected finite numbers, found NaN or inf")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot: expected a positive int (bootstrap resamples), got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a confidence level in (0, 1), got {level!r}")
    n = len(xa)
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        rho, p = float("nan"), float("nan")
    else:
        res = stats.spearmanr(xa, ya)
        rho, p = float(res.statistic), float(res.pvalue)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rx, ry = _rank_rows(xa[idx]), _rank_rows(ya[idx])  # (n_boot, n)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    ok = den > 0
    rhos = (rx * ry).sum(axis=1)[ok] / den[ok]
    if len(rhos):
        lo, hi = np.quantile(rhos, [(1 - level) / 2, (1 + level) / 2])
    else:
        lo = hi = float("nan")
    return dict(rho=rho, lo=float(lo), hi=float(hi), p=p, n=n, valid=int(ok.sum()))


def correlation_table(per_image: pd.DataFrame, measures: Sequence[str] = MEASURES, target: str = "distinct",
                      by: str = "class", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Spearman rho of ``target`` with each measure, per value of column ``by`` and over all rows ('all').

    Returns columns class, measure, rho, lo, hi, p, n, valid (``spearman_ci``); groups with fewer than 3 images
    are skipped.
    """
    need = {target, by, *measures}
    if not isinstance(per_image, pd.DataFrame) or not need <= set(per_image.columns):
        got = sorted(per_image.columns) if isinstance(per_image, pd.DataFrame) else type(per_image).__name__
        raise ValueError(f"per_image: expected a DataFrame with columns {sorted(need)}, got {got}")
    groups = [("all", per_image)] + [(str(k), g) for k, g in per_image.groupby(by, sort=True)]
    rows = []
    for name, g in groups:
        if len(g) < 3:
            continue
        for m in measures:
            r = spearman_ci(g[target].to_numpy(), g[m].to_numpy(), n_boot, seed, level)
            rows.append(dict(**{"class": name, "measure": m}, **r))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- token level


@dataclass
class CodeInfluence:
    """One image's token-level view: its distinct codes (d,) int64 and their multiplicities (d,), the decode of the
    full set (3, H, W) float in [-1, 1], and maps (d, H, W) float32: mean over channels of |full - decode without
    all copies of the code|, ordered by decreasing total influence."""

    codes: torch.Tensor
    counts: torch.Tensor
    full: torch.Tensor
    maps: torch.Tensor


@torch.no_grad()
def _decode_any(model: SetTokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, K) int64 with any K >= 1 -> images (B, 3, H, W) in [-1, 1] on the CPU (no shuffle, clamped)."""
    dev = next(model.parameters()).device
    codes = model.quantizer.indices_to_codes(tokens.to(dev))
    try:
        out = model.decode_codes(codes, shuffle=False)
    except RuntimeError as err:
        raise ValueError(f"this tokenizer's decoder (decoder_input={model.cfg.decoder_input!r}) cannot decode "
                         f"{tokens.shape[1]} tokens (expected any count for a set decoder): {err}") from None
    return out.clamp(-1.0, 1.0).float().cpu()


def code_influence(model: SetTokenizer, tokens: torch.Tensor) -> list[CodeInfluence]:
    """For each row of ``tokens`` (N, M) of a set tokenizer: the pixels each distinct code answers for (see the
    module docstring). Decodes N * (1 + distinct) token sets, batched by the number of tokens left; keep N small.
    """
    if model.cfg.ordered:
        raise ValueError("code_influence: expected a set tokenizer; the ordered control's decoder adds one position "
                         f"per token and cannot decode fewer than M={model.cfg.num_tokens} tokens")
    c, m = model.cfg.codebook_size, model.cfg.num_tokens
    _check_tokens(tokens, c)
    if tokens.shape[1] != m:
        raise ValueError(f"tokens: expected shape (N, {m}) for this tokenizer, got {tuple(tokens.shape)}")
    if m < 2:
        raise ValueError(f"code_influence needs M >= 2 tokens (removing a code must leave one), got M={m}")
    counts = set_to_counts(tokens.long().cpu(), c)  # (N, C)
    full = _decode_any(model, tokens.long())  # (N, 3, H, W)
    # every (image, code) pair: the counts with that code zeroed, grouped by how many tokens remain
    img, code = (counts > 0).nonzero(as_tuple=True)  # (P,), (P,)
    removed = counts[img, code]  # (P,)
    if int(removed.max()) == m:  # one code with all M copies: nothing left to decode
        raise ValueError("code_influence: an image's set is a single code repeated M times; removing it leaves no "
                         "tokens to decode")
    reduced = counts[img].clone()
    reduced[torch.arange(len(img)), code] = 0
    diff = torch.empty(len(img), *full.shape[2:])
    for k in removed.unique().tolist():
        sel = (removed == k).nonzero(as_tuple=True)[0]
        dec = _decode_any(model, counts_to_set(reduced[sel]))  # (S, 3, H, W) from M - k tokens
        diff[sel] = (full[img[sel]] - dec).abs().mean(dim=1)
    out = []
    for i in range(len(tokens)):
        sel = (img == i).nonzero(as_tuple=True)[0]
        order = diff[sel].flatten(1).sum(dim=1).argsort(descending=True)
        sel = sel[order]
        out.append(CodeInfluence(codes=code[sel], counts=removed[sel], full=full[i], maps=diff[sel]))
    return out
