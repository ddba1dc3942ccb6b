"""Robustness of the tokens to local perturbation (paper, Table 2): the share of an image's tokens that survive
Gaussian noise added to its pixels at a given signal-to-noise ratio.

Noise. Images are floats in [-1, 1]. For image i with pixels x_i (all channels),

    P_i     = mean(x_i ** 2)                    signal="power" (default): the mean squared pixel value in [-1, 1]
            = mean((x_i - mean(x_i)) ** 2)      signal="variance": the pixel variance (offset-free)
    sigma_i = sqrt(P_i / 10 ** (snr_db / 10))   so that 10 log10(P_i / sigma_i ** 2) = snr_db
    noisy_i = clamp(x_i + sigma_i * z_i, -1, 1),  z_i ~ N(0, I) drawn from a seeded torch.Generator

The clamp is on by default because the tokenizer's encoder accepts only images in [-1, 1]; it removes part of the
noise at low SNR, so ``measured_snr_db`` (10 log10(P_i / mean((noisy_i - x_i) ** 2))) reports the SNR the encoder
actually saw. Note that under signal="power" a black pixel (-1) counts as signal: dark images get as much noise as
bright ones of the same contrast.

Kept share. With clean tokens a = (a_1..a_M) and noisy tokens b = (b_1..b_M) of one image:

    multiset kept  = sum_j min(n_j(a), n_j(b)) / M     n_j(t) = #{k : t_k = j} (the count vector, bijection)
    position kept  = #{k : a_k = b_k} / M

The multiset share is the one that fits a set tokenizer (its token order carries no information); the position
share is the one that fits an ordered tokenizer (TiTok). The position share of a set tokenizer is a lower bound of
its multiset share and understates its robustness: an unchanged multiset may come back in another order.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import torch

from tokenset.analysis import encode_images
from tokenset.bijection import set_to_counts
from tokenset.images import to_float
from tokenset.stats import bootstrap_mean_ci, paired_difference
from tokenset.tokenizer import SetTokenizer

__all__ = ["SNR_DB", "METRICS", "signal_power", "add_noise", "measured_snr_db", "multiset_kept", "position_kept",
           "kept_shares", "summarise", "natural_means", "compare_seeds", "describe", "TABLE_NOTE"]

SNR_DB = (40.0, 30.0, 20.0, 10.0, 1.0)  # the paper's Table 2 levels
METRICS = ("multiset", "position")
Signal = Literal["power", "variance"]

TABLE_NOTE = (
    "Share of tokens kept when Gaussian noise is added to each validation image at a given SNR. "
    "SNR = 10 log10(P / sigma^2) per image, P = {signal_text} of the image in [-1, 1]; the noisy image is clamped "
    "to [-1, 1] before encoding. snr_db is the nominal SNR of the added noise; measured_snr_db, beside it, is the "
    "SNR the encoder saw after the clamp (mean over images), higher than the nominal one at low SNR. "
    "multiset kept = sum_j min(n_j(clean), n_j(noisy)) / M over the count vectors n; "
    "position kept = #{{k : clean_k = noisy_k}} / M. "
    "natural = the metric that fits the arm (multiset for the set tokenizer, position for the ordered control). "
    "Mean over {images} images x {draws} noise draw(s) per image (the draws averaged per image first); "
    "lo/hi: {level:.0%} percentile bootstrap interval of the mean over images ({n_boot} resamples, seed {seed})."
)


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a float tensor (N, C, H, W) in [-1, 1], got {got}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got shape {tuple(images.shape)}")


def _check_signal(signal: str) -> None:
    if signal not in ("power", "variance"):
        raise ValueError(f"signal: expected 'power' (mean squared pixel value) or 'variance', got {signal!r}")


def signal_power(images: torch.Tensor, signal: Signal = "power") -> torch.Tensor:
    """Per-image signal power P of float images (N, C, H, W) in [-1, 1] -> (N,) float32 (module docstring)."""
    _check_images(images)
    _check_signal(signal)
    x = images.float().flatten(1)
    if signal == "variance":
        x = x - x.mean(dim=1, keepdim=True)
    return x.pow(2).mean(dim=1)


def add_noise(images: torch.Tensor, snr_db: float, generator: torch.Generator | None = None,
              noise: torch.Tensor | None = None, signal: Signal = "power", clamp: bool = True) -> torch.Tensor:
    """Float images (N, C, H, W) in [-1, 1] plus white Gaussian noise at ``snr_db`` dB per image (module docstring).

    ``noise``: a standard normal tensor of the images' shape to scale (to reuse one draw across SNR levels and
    tokenizers); else it is drawn on the CPU from ``generator``. ``clamp`` clips the result to [-1, 1].
    Returns float32 (N, C, H, W) on the images' device.
    """
    _check_images(images)
    _check_signal(signal)
    if not isinstance(snr_db, (int, float)) or isinstance(snr_db, bool) or not math.isfinite(snr_db):
        raise ValueError(f"snr_db: expected a finite number of decibels, got {snr_db!r}")
    if noise is None:
        noise = torch.randn(images.shape, generator=generator)
    elif not isinstance(noise, torch.Tensor) or noise.shape != images.shape or not noise.is_floating_point():
        got = f"{noise.dtype} {tuple(noise.shape)}" if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise: expected a float tensor of the images' shape {tuple(images.shape)}, got {got}")
    sigma = (signal_power(images, signal) / 10.0 ** (snr_db / 10.0)).sqrt()  # (N,)
    noisy = images.float() + sigma.view(-1, 1, 1, 1) * noise.to(images.device, torch.float32)
    return noisy.clamp(-1.0, 1.0) if clamp else noisy


def measured_snr_db(clean: torch.Tensor, noisy: torch.Tensor, signal: Signal = "power") -> torch.Tensor:
    """10 log10(P(clean) / mean((noisy - clean) ** 2)) per image -> (N,) float32 (inf where noisy == clean)."""
    _check_images(clean, "clean")
    _check_images(noisy, "noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy differ in shape: {tuple(clean.shape)} vs {tuple(noisy.shape)}")
    noise_power = (noisy.float() - clean.float()).flatten(1).pow(2).mean(dim=1)
    return 10.0 * torch.log10(signal_power(clean, signal) / noise_power)


def _check_token_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    for name, t in (("clean", a), ("noisy", b)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype.is_floating_point or t.dtype.is_complex \
                or t.dtype == torch.bool:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} tokens: expected an integer tensor (N, M), got {got}")
    if a.shape != b.shape:
        raise ValueError(f"clean and noisy tokens differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[1] == 0:
        raise ValueError(f"tokens: expected at least one token per image (M >= 1), got shape {tuple(a.shape)}")


def position_kept(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Position-wise kept share #{k : clean_k = noisy_k} / M. (N, M), (N, M) integer -> (N,) float32."""
    _check_token_pair(clean, noisy)
    return (clean == noisy).float().mean(dim=1)


def multiset_kept(clean: torch.Tensor, noisy: torch.Tensor, codebook_size: int, chunk: int = 4096) -> torch.Tensor:
    """Multiset kept share sum_j min(n_j(clean), n_j(noisy)) / M, from the count vectors of
    ``bijection.set_to_counts``. (N, M), (N, M) integer in [0, codebook_size) -> (N,) float32.

    Invariant under any permutation of either row. ``chunk`` rows at a time bound the (chunk, C) count memory.
    """
    _check_token_pair(clean, noisy)
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size: expected a positive int, got {codebook_size!r}")
    for name, t in (("clean", clean), ("noisy", noisy)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= codebook_size):
            raise ValueError(f"{name} tokens: expected codes in [0, {codebook_size}), "
                             f"got values in [{int(t.min())}, {int(t.max())}]")
    m = clean.shape[1]
    out = []
    for lo in range(0, len(clean), max(1, chunk)):
        ca = set_to_counts(clean[lo:lo + chunk], codebook_size)
        cb = set_to_counts(noisy[lo:lo + chunk], codebook_size)
        out.append(torch.minimum(ca, cb).sum(dim=1).float() / m)
    return torch.cat(out) if out else torch.zeros(0)


def kept_shares(model: SetTokenizer, images: torch.Tensor, snr_db: Iterable[float] = SNR_DB, draws: int = 1,
                seed: int = 0, signal: Signal = "power", clamp: bool = True, batch_size: int = 256) -> pd.DataFrame:
    """Kept shares of one tokenizer, per image and SNR level, averaged over ``draws`` noise draws.

    images: (N, 3, H, W) uint8. Draw d uses z ~ N(0, I) from ``torch.Generator().manual_seed(seed + d)`` for all
    SNR levels (common random numbers: the same seed gives every tokenizer the same noise). Keep ``clamp=True``:
    the encoder rejects images outside [-1, 1].
    Returns a long DataFrame with columns image, snr_db, metric (``METRICS``), kept, measured_snr_db
    (the SNR after the clamp, averaged over draws): N x len(snr_db) x 2 rows.
    """
    levels = [float(s) for s in snr_db]
    if not levels:
        raise ValueError("snr_db: expected at least one SNR level in dB, got none")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws: expected a positive int (noise draws per image), got {draws!r}")
    clean_tokens = encode_images(model, images, batch_size)  # also checks images: uint8 (N, 3, H, W)
    clean = to_float(images)
    c = model.cfg.codebook_size
    n = len(images)
    kept = {(s, k): torch.zeros(n) for s in levels for k in METRICS}
    snr_seen = {s: torch.zeros(n) for s in levels}
    for d in range(draws):
        z = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + d))
        for s in levels:
            noisy = add_noise(clean, s, noise=z, signal=signal, clamp=clamp)
            snr_seen[s] += measured_snr_db(clean, noisy, signal) / draws
            with torch.no_grad():
                dev = next(model.parameters()).device
                tokens = torch.cat([model.encode(noisy[i:i + batch_size].to(dev)).cpu()
                                    for i in range(0, n, batch_size)])
            kept[s, "multiset"] += multiset_kept(clean_tokens, tokens, c) / draws
            kept[s, "position"] += position_kept(clean_tokens, tokens) / draws
    frames = [pd.DataFrame(dict(image=np.arange(n), snr_db=s, metric=k, kept=kept[s, k].numpy(),
                                measured_snr_db=snr_seen[s].numpy())) for s in levels for k in METRICS]
    return pd.concat(frames, ignore_index=True)


def _check_columns(table: object, name: str, need: set[str]) -> None:
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        got = sorted(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise ValueError(f"{name}: expected a DataFrame with columns {sorted(need)}, got {got}")


def _natural(arm, metric):
    """Whether ``metric`` is the one that fits ``arm`` (scalars or Series): multiset for a set tokenizer, position
    for the ordered control."""
    return (metric == "multiset") == (arm != "ordered")


def summarise(per_image: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per-image kept shares (``kept_shares`` output, with an ``arm`` column) -> one row per arm x metric x SNR:
    arm, metric, snr_db (nominal), measured_snr_db (the SNR after the clamp, mean over images; beside the nominal
    one because the clamp lowers the noise at low SNR: nominal 1 dB can be 3 dB seen), natural, kept_mean, kept_lo,
    kept_hi (bootstrap over images), images."""
    _check_columns(per_image, "per_image", {"arm", "metric", "snr_db", "kept", "measured_snr_db"})
    rows = []
    for (arm, metric, snr), g in per_image.groupby(["arm", "metric", "snr_db"], sort=False):
        kept = g["kept"].to_numpy(dtype=np.float64)
        lo, hi = bootstrap_mean_ci(kept, level, n_boot, seed)
        mean = float(kept.mean())
        natural = _natural(arm, metric)
        rows.append(dict(arm=arm, metric=metric, snr_db=snr, measured_snr_db=float(g["measured_snr_db"].mean()),
                         natural=natural, kept_mean=mean, kept_lo=lo, kept_hi=hi, images=len(g)))
    return pd.DataFrame(rows).sort_values(["arm", "metric", "snr_db"], ascending=[False, True, False],
                                          ignore_index=True)


def natural_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per-image kept shares of several arms (``kept_shares`` output with an ``arm`` column) -> the mean share of
    each arm's natural metric (multiset for a set tokenizer, position for ``ordered``) per SNR level: columns arm,
    snr_db, measured_snr_db, kept_mean."""
    _check_columns(per_image, "per_image", {"arm", "metric", "snr_db", "kept", "measured_snr_db"})
    natural = per_image[_natural(per_image["arm"], per_image["metric"])]
    return (natural.groupby(["arm", "snr_db"], sort=False)
            .agg(measured_snr_db=("measured_snr_db", "mean"), kept_mean=("kept", "mean")).reset_index())


def compare_seeds(per_seed: pd.DataFrame, arm: str = "set", control: str = "ordered",
                  level: float = 0.95) -> pd.DataFrame:
    """Run-level comparison of two arms over independently trained tokenizers.

    per_seed: ``natural_means`` rows of several seeds, with a ``seed`` column (each seed trained once per arm).
    Returns one row per SNR level: snr_db, measured_snr_db (mean over seeds and arms), ``{arm}`` and ``{control}``
    (mean natural kept share over seeds), diff (arm minus control, paired by seed), std (ddof 1), ci_low,
    ci_high (``level`` t interval over seeds; NaN with one seed), seeds.
    """
    _check_columns(per_seed, "per_seed", {"arm", "seed", "snr_db", "measured_snr_db", "kept_mean"})
    wide = per_seed.pivot_table(index=["snr_db", "seed"], columns="arm", values="kept_mean")
    for name in (arm, control):
        if name not in wide.columns:
            raise ValueError(f"per_seed: no rows of arm {name!r}; arms present: {sorted(wide.columns)}")
    wide = wide[[arm, control]].dropna()
    rows = []
    for snr, g in wide.groupby(level="snr_db", sort=False):
        d = paired_difference(g[arm].to_numpy(), g[control].to_numpy(), level)
        seen = float(per_seed.loc[per_seed["snr_db"] == snr, "measured_snr_db"].mean())
        rows.append({"snr_db": snr, "measured_snr_db": seen, arm: float(g[arm].mean()),
                     control: float(g[control].mean()), "diff": d["mean"], "std": d["std"], "ci_low": d["ci_low"],
                     "ci_high": d["ci_high"], "seeds": d["n"]})
    return pd.DataFrame(rows).sort_values("snr_db", ascending=False, ignore_index=True)


def describe(table: pd.DataFrame, arm: str, metric: str, snr_db: float) -> str:
    """One cell of a ``summarise`` table as text: 'kept% [lo, hi]' in percent."""
    row = table[(table["arm"] == arm) & (table["metric"] == metric) & (table["snr_db"] == snr_db)]
    if len(row) != 1:
        raise ValueError(f"table: expected one row for arm {arm!r}, metric {metric!r}, snr_db {snr_db}, "
                         f"found {len(row)}")
    r = row.iloc[0]
    return f"{100 * r.kept_mean:.1f}% [{100 * r.kept_lo:.1f}, {100 * r.kept_hi:.1f}]"
