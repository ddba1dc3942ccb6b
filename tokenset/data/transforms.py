"""Pixel-level conversions of the data sources: size fitting, flips, alpha compositing, ADM's centre crop, RGB.

uint8 <-> float conversion is ``tokenset.images`` (re-exported by ``tokenset.data``). Flips of a Dataset are drawn
from (seed, epoch, index) (``coin``), so they do not depend on the loader's worker processes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tokenset.images import to_float

__all__ = ["fit_size", "random_hflip", "composite_on_black", "adm_center_crop", "to_rgb", "coin", "FlipMixin"]

def fit_size(images: torch.Tensor, size: int, how: Literal["pad", "resize"]) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, size, size) uint8.

    ``pad``: centre on a black canvas (needs h, w <= size); ``resize``: antialiased bilinear to size x size
    (needs h == w: non-square inputs are an error here, crop them first).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if how == "pad":
        if h > size or w > size:
            raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}; resize instead")
        top, left = (size - h) // 2, (size - w) // 2
        out = images.new_zeros((n, c, size, size))
        out[:, :, top:top + h, left:left + w] = images
        return out
    if h != w:
        raise ValueError(f"resize expects square images, got {h}x{w}")
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 1/2 (``generator`` lives on the CPU)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.to(images.device).view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)


def composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(..., 4) uint8 RGBA -> (..., 3) uint8 RGB, i.e. round(rgb * alpha / 255)."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop (guided-diffusion ``center_crop_arr``): PIL RGB image -> (size, size, 3) uint8.

    Halve with a BOX filter while the short side is >= 2 * size, resize with BICUBIC so that the short side is
    ``size``, then crop the centre.
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB, as documented in the module docstring (alpha composited on black)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return Image.fromarray(composite_on_black(np.asarray(image.convert("RGBA"))), "RGB")
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise ValueError(f"unsupported image mode {mode!r}")


# ----------------------------------------------------------------------------------------- flips of a Dataset


def coin(seed: int, epoch: int, index: int) -> bool:
    """A fair coin from (seed, epoch, index) (splitmix64): flips that do not depend on worker processes."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + index * 0xBF58476D1CE4E5B9 + 1) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return bool((x ^ (x >> 31)) >> 63)


class FlipMixin:
    flip: bool
    flip_seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """New random flips for a new epoch (``set_epoch(loader, epoch)`` calls this)."""
        self.epoch = epoch

    def _finish(self, image: torch.Tensor, index: int, as_float: bool) -> torch.Tensor:
        if self.flip and coin(self.flip_seed, self.epoch, index):
            image = image.flip(-1)
        return to_float(image) if as_float else image
