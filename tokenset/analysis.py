"""Analyses that sit on top of a trained tokenizer: batched encode/decode of uint8 images, token orders, the
permutation evidence (does the decode depend on the order of the tokens?), and ``score_tokenizer``, the one way every
stage scores a tokenizer's reconstructions (beside ``score_reconstruction`` for the trivial baselines).

The set tokenizer's decoder has no latent positional embedding, so ``decode(tokens[:, perm]) == decode(tokens)``
up to float rounding for every permutation ``perm``; the ordered (TiTok) control has one, so it does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

from tokenset import metrics
from tokenset.bijection import canonical_order
from tokenset.images import to_float, to_uint8
from tokenset.tokenizer import SetTokenizer

__all__ = ["ORDERS", "reorder", "encode_images", "decode_tokens", "reconstruct", "permutation_spread",
           "Score", "score_reconstruction", "score_tokenizer", "reference_subset", "one_per_class"]

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
    if num_perms < 1:
        raise ValueError(f"num_perms must be at least 1, got {num_perms}")
    g = torch.Generator().manual_seed(seed)
    reference = decode_tokens(model, tokens, batch_size)  # (N, 3, H, W)
    spread = torch.empty(len(tokens), num_perms)
    for k in range(num_perms):
        permuted = decode_tokens(model, reorder(tokens, "shuffled", g), batch_size)
        spread[:, k] = (permuted - reference).abs().flatten(1).amax(dim=1)
    return spread


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


def reference_subset(images: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The real reference of every FID: ``n`` images drawn without replacement by ``seed`` (all of them if ``n`` is 0
    or at least their number), in the drawn order. Returns (images (n, ...), their indices (n,) int64)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer (0: all images), got {n!r}")
    if n == 0 or n >= len(images):
        return images, torch.arange(len(images))
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index], index


def one_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The index of the first image of each class 0..num_classes-1 (classes with no image are skipped): (K,) int64."""
    picks = [int(torch.nonzero(labels == k)[0]) for k in range(num_classes) if bool((labels == k).any())]
    return torch.as_tensor(picks, dtype=torch.int64)
