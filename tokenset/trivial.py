"""Trivial reconstructions a tokenizer must beat: each image's mean, and thumbnails of block means.

A tokenizer's PSNR means something only beside what a codec with no learning reaches at a similar bit count:

- ``mean``: every pixel replaced by its image's mean (per channel): 3 bytes per image (1 for grey images).
- ``block k x k``: the image cut into a k x k grid of blocks, each replaced by its mean (per channel), rounded to
  uint8: k * k bytes per channel (a 4 x 4 grey thumbnail is 128 bits; 8 x 8 is 512 bits).

Every function takes and returns uint8 images (N, C, H, W); nothing is learnt, so the numbers are exact and
reproducible. This module imports nothing else from tokenset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mean_image", "block_means", "trivial_reconstructions", "bits_per_image"]


def _check(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected uint8 (N, C, H, W), got {got}")


def mean_image(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, H, W) uint8: each pixel is its image's mean value of that channel."""
    _check(images)
    return images.float().mean(dim=(2, 3), keepdim=True).expand_as(images).round().to(torch.uint8)


def block_means(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, H, W) uint8: a ``grid`` x ``grid`` thumbnail of block means, each block's
    mean (rounded to uint8) repeated over its pixels. H and W must be multiples of ``grid``."""
    _check(images)
    h, w = images.shape[-2:]
    if not isinstance(grid, int) or grid < 1 or h % grid or w % grid:
        raise ValueError(f"grid: expected a positive integer dividing the image size {h}x{w}, got {grid!r}")
    thumb = F.avg_pool2d(images.float(), (h // grid, w // grid)).round()  # (N, C, grid, grid)
    return F.interpolate(thumb, size=(h, w), mode="nearest").to(torch.uint8)


def bits_per_image(name: str, channels: int) -> int:
    """Bits a trivial reconstruction stores per image: 8 per value (``mean``: ``channels`` values;
    ``block k x k``: k * k * ``channels``)."""
    if name == "mean":
        return 8 * channels
    if name.startswith("block ") and "x" in name:
        k = int(name.split()[1].split("x")[0])
        return 8 * k * k * channels
    raise ValueError(f"name: expected 'mean' or 'block KxK', got {name!r}")


def trivial_reconstructions(images: torch.Tensor, grids: tuple[int, ...] = (4, 8)) -> dict[str, torch.Tensor]:
    """{'mean': ..., 'block 4x4': ..., 'block 8x8': ...}: the baselines beside every reconstruction number."""
    out = {"mean": mean_image(images)}
    out.update({f"block {g}x{g}": block_means(images, g) for g in grids})
    return out
