"""Helpers shared by test modules."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def randomized(model, seed=0, std=0.2):
    """The model with every parameter redrawn, so that (unlike a zero-initialised read-out) outputs depend on
    every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def uint8_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """``n`` smooth random images (n, 3, size, size) uint8: bilinear upsampling of 4x4 noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def write_image_folder(root: Path, n: int, seed: int = 0, size: int = 16) -> Path:
    """An ImageFolder of ``n`` PNGs of ``uint8_images`` under ``root/train/{a,b}/`` (alternating classes)."""
    for i, img in enumerate(uint8_images(n, seed, size).permute(0, 2, 3, 1).numpy()):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i}.png")
    return root
