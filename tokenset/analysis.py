"""Analyses that sit on top of a trained tokenizer: batched encode/decode of uint8 images, token orders, the
permutation evidence (does the decode depend on the order of the tokens?), and ``score_tokenizer``, the one way every
stage scores a tokenizer's reconstructions (beside ``score_reconstruction`` for the trivial baselines), and
``first_reaching``: when a training log first reached a score.

The set tokenizer's decoder has no latent positional embedding, so ``decode(tokens[:, perm]) == decode(tokens)``
up to float rounding for every permutation ``perm``; the ordered (TiTok) control has one, so it does not.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from tokenset import metrics
from tokenset.bijection import canonical_order
from tokenset.images import to_float, to_uint8
from tokenset.tokenizer import SetTokenizer

__all__ = ["ORDERS", "reorder", "encode_images", "decode_tokens", "reconstruct", "permutation_spread",
           "permutation_effects", "Score", "score_reconstruction", "score_tokenizer", "reference_subset",
           "one_per_class", "first_reaching"]

ORDERS = ("original", "reversed", "shuffled", "ascending", "descending")


def reorder(tokens: torch.Tensor, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens (B, M) in one of ``ORDERS``: the encoder's order, reversed, a random permutation per row
    (drawn from ``generator``), sorted ascending (the canonical sequence) or descending."""
    if order == "original":
        return tokens
    if order == "reversed":
        return tokens.flip(1)
    if order == "ascending":
        return canonical_order(tokens)
    if order == "descending":
        return canonical_order(tokens).flip(1)
    if order == "shuffled":
        perm = torch.rand(tokens.shape, generator=generator).argsort(dim=1).to(tokens.device)
        return tokens.gather(1, perm)
    raise ValueError(f"unknown token order {order!r}; expected one of {ORDERS}")


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for lo in range(0, n, batch_size):
        yield slice(lo, min(lo + batch_size, n))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: SetTokenizer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> tokens (N, M) int64 on the CPU, in the encoder's order."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected uint8 (N, 3, H, W), got {got}")
    dev = _device(model)
    return torch.cat([model.encode(to_float(images[s]).to(dev)).cpu() for s in _chunks(len(images), batch_size)])


@torch.no_grad()
def decode_tokens(model: SetTokenizer, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """tokens (N, M) int64 -> float images (N, 3, H, W) in [-1, 1] on the CPU (decoded in the given order)."""
    dev = _device(model)
    return torch.cat([model.decode(tokens[s].to(dev)).cpu() for s in _chunks(len(tokens), batch_size)])


def reconstruct(model: SetTokenizer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> uint8 reconstructions (encode, then decode)."""
    return to_uint8(decode_tokens(model, encode_images(model, images, batch_size), batch_size))


@torch.no_grad()
def permutation_spread(model: SetTokenizer, tokens: torch.Tensor, num_perms: int = 100, seed: int = 0,
                       batch_size: int = 256) -> torch.Tensor:
    """For each image, the largest absolute pixel difference (in [-1, 1] units) between the decode of its tokens
    in the encoder's order and the decode under each of ``num_perms`` random permutations.

    tokens: (N, M) int64 -> (N, num_perms) float32. Float rounding only (~1e-6) for a set tokenizer.
    """
    return permutation_effects(model, tokens, None, num_perms, seed, batch_size)["spread"]


def permutation_effects(model: SetTokenizer, tokens: torch.Tensor, images: torch.Tensor | None, num_perms: int = 100,
                        seed: int = 0, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``permutation_spread`` (key "spread") and, given the uint8 ``images`` the tokens encode ((N, 3, H, W)), the
    PSNR each image loses when its tokens are decoded in a random order instead of the encoder's (key "psnr_drop",
    (N, num_perms) float64 dB; > 0: worse). The same permutations (seeded by ``seed``) for both."""
    if num_perms < 1:
        raise ValueError(f"num_perms must be at least 1, got {num_perms}")
    if images is not None and (images.shape[0] != tokens.shape[0] or images.dtype != torch.uint8):
        raise ValueError(f"images: expected uint8 images, one per token row ({tokens.shape[0]}), got "
                         f"{images.dtype} of shape {tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    reference = decode_tokens(model, tokens, batch_size)  # (N, 3, H, W)
    spread = torch.empty(len(tokens), num_perms)
    drop = torch.empty(len(tokens), num_perms, dtype=torch.float64)
    base = metrics.psnr(to_uint8(reference), images, reduction="none") if images is not None else None
    for k in range(num_perms):
        permuted = decode_tokens(model, reorder(tokens, "shuffled", g), batch_size)
        spread[:, k] = (permuted - reference).abs().flatten(1).amax(dim=1)
        if images is not None:
            drop[:, k] = base - metrics.psnr(to_uint8(permuted), images, reduction="none")
    return {"spread": spread} | ({"psnr_drop": drop} if images is not None else {})


# --------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class Score:
    """Reconstructions of N images and their per-image quality.

    recon: uint8 (N, 3, H, W); psnr, ssim: float64 (N,) per image (uint8 PSNR as the tables report it);
    tokens: (N, M) int64 and ``stats`` (``metrics.token_stats``) for a tokenizer, None for a trivial baseline.
    """

    recon: torch.Tensor
    psnr: torch.Tensor
    ssim: torch.Tensor
    tokens: torch.Tensor | None = None
    stats: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """One table row: mean PSNR / SSIM over the images and, for a tokenizer, its token statistics."""
        out: dict[str, Any] = dict(val_psnr=float(self.psnr.mean()), val_ssim=float(self.ssim.mean()),
                                   images=len(self.psnr))
        if self.stats is not None:
            out.update(codebook_usage=self.stats["usage"], entropy_bits=self.stats["entropy_bits"],
                       perplexity=self.stats["perplexity"], distinct_per_image=self.stats["distinct_per_image_mean"],
                       max_multiplicity=self.stats["max_multiplicity_mean"])
        return out


def score_reconstruction(recon: torch.Tensor, images: torch.Tensor) -> Score:
    """Per-image PSNR and SSIM of uint8 reconstructions ``recon`` of uint8 ``images`` (both (N, 3, H, W))."""
    return Score(recon=recon, psnr=metrics.psnr(recon, images, reduction="none"),
                 ssim=metrics.ssim(recon, images, reduction="none"))


def score_tokenizer(model: SetTokenizer, images: torch.Tensor, batch_size: int = 256) -> Score:
    """Encode uint8 ``images`` (N, 3, H, W), decode in the encoder's order, and score: per-image PSNR / SSIM and the
    token statistics (codebook usage, entropy, distinct codes per image, largest repeat)."""
    tokens = encode_images(model, images, batch_size)
    recon = to_uint8(decode_tokens(model, tokens, batch_size))
    score = score_reconstruction(recon, images)
    score.tokens, score.stats = tokens, metrics.token_stats(tokens, model.cfg.codebook_size)
    return score


class FidLog:
    """``metrics.fid_kid`` of fake sets against one fixed real set, every result kept with its labels.

    reference: uint8 (N, 3, H, W), the real set of every score; real_split: its name in the feature cache;
    options: ``metrics.fid_options(...)``. ``records`` (a list of dicts: the labels, then fid_kid's result) is what
    a stage writes to results/.../records.json.
    """

    def __init__(self, reference: torch.Tensor, real_split: str, options: dict[str, Any]) -> None:
        self.reference, self.real_split, self.options = reference, real_split, dict(options)
        self.records: list[dict[str, Any]] = []

    def score(self, fake: torch.Tensor, seed: int = 0, **labels: Any) -> dict[str, Any]:
        """fid_kid(reference, fake) with ``seed``; the result is recorded under ``labels`` and returned."""
        result = metrics.fid_kid(self.reference, fake, real_split=self.real_split, seed=seed, **self.options)
        self.records.append({**labels, **result})
        return result

    def floor(self, images: torch.Tensor, n: int, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The real-vs-real floor at ``n`` fakes: for each seed, ``n`` of ``images`` drawn without replacement
        (``torch.randperm`` seeded by it) scored against the reference. Returns {seed: result}."""
        if n > len(images):
            raise ValueError(f"floor: n = {n} images requested, only {len(images)} given")
        out = {}
        for seed in seeds:
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
            out[seed] = self.score(images[pick], seed, what="real-vs-real floor")
        return out

    def find(self, **labels: Any) -> dict[str, Any]:
        """The first record whose labels include ``labels`` (KeyError naming them if none)."""
        for record in self.records:
            if all(record.get(k) == v for k, v in labels.items()):
                return record
        raise KeyError(f"no FID record with {labels}; {len(self.records)} records")


def reference_subset(images: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The real reference of every FID: ``n`` images drawn without replacement by ``seed`` (all of them if ``n`` is 0
    or at least their number), in the drawn order. Returns (images (n, ...), their indices (n,) int64)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer (0: all images), got {n!r}")
    if n == 0 or n >= len(images):
        return images, torch.arange(len(images))
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index], index


def seed_run(arm: str, seed: int, seeds: Sequence[int]) -> str:
    """The checkpoint folder of ``arm`` (a tokenizer arm of stage ``tokenizer``, a generator of stage ``generators``)
    trained with ``seed``: ``arm`` for the first of ``seeds`` (the run later stages use), ``{arm}_seed{seed}`` for
    the others."""
    seeds = list(seeds)
    if seed not in seeds:
        raise ValueError(f"seed {seed!r} is not one of the seeds {seeds}")
    return arm if seed == seeds[0] else f"{arm}_seed{seed}"


def one_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The index of the first image of each class 0..num_classes-1 (classes with no image are skipped): (K,) int64."""
    picks = [int(torch.nonzero(labels == k)[0]) for k in range(num_classes) if bool((labels == k).any())]
    return torch.as_tensor(picks, dtype=torch.int64)


# --------------------------------------------------------------------------------------------- training logs


def first_reaching(log: pd.DataFrame, threshold: float, column: str = "val_psnr") -> tuple[int | None, float | None]:
    """When a training run first reached a score: (step, training seconds) of the first row of ``log`` whose
    ``column`` is at least ``threshold``, or (None, None) if no row does.

    log: a tokenizer's training log (``log.csv`` of ``train.fit_tokenizer``, one row per ``train.log_every`` steps,
    in training order) with the columns ``step``, ``elapsed_s`` and ``column``; a row whose ``column`` is empty
    (NaN) never counts. Returns (int step, float elapsed_s).
    """
    if not isinstance(log, pd.DataFrame):
        raise ValueError(f"log: expected a pandas DataFrame (a training log.csv), got {type(log).__name__}")
    for name in ("step", "elapsed_s", column):
        if name not in log.columns:
            raise ValueError(f"log has no column {name!r}: expected a training log with the columns 'step', "
                             f"'elapsed_s' and {column!r}, got {list(log.columns)}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise ValueError(f"threshold: expected a number, got {threshold!r}")
    try:
        values = pd.to_numeric(log[column])
    except (TypeError, ValueError) as err:
        raise ValueError(f"log column {column!r}: expected numbers, got {log[column].dtype} ({err})") from None
    hit = log[values >= threshold]
    return (None, None) if hit.empty else (int(hit["step"].iloc[0]), float(hit["elapsed_s"].iloc[0]))
