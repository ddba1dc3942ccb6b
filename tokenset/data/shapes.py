"""Drawn shapes: grey-scale images of a kind no tokenizer here was trained on (a generalisation check).

Each image is a black 28 x 28 canvas with 1 to 3 filled or outlined shapes (ellipse, rectangle, triangle, line) of
random grey levels, drawn with Pillow, then centre-padded to ``size`` and repeated to 3 channels exactly as the
Fashion-MNIST images are. Deterministic in ``seed``; nothing is downloaded. This module imports nothing else from
tokenset.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "drawn_shapes"]

SHAPES = ("ellipse", "rectangle", "triangle", "line")
_CANVAS = 28


def _draw_one(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    kind = SHAPES[rng.integers(len(SHAPES))]
    grey = int(rng.integers(80, 256))
    x0, y0 = (int(v) for v in rng.integers(1, _CANVAS // 2, size=2))
    x1, y1 = (int(v) for v in rng.integers(_CANVAS // 2, _CANVAS - 1, size=2))
    filled = bool(rng.integers(2))
    outline = int(rng.integers(1, 3))
    if kind == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=grey if filled else None, outline=grey, width=outline)
    elif kind == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=grey if filled else None, outline=grey, width=outline)
    elif kind == "triangle":
        pts = [tuple(int(v) for v in rng.integers(1, _CANVAS - 1, size=2)) for _ in range(3)]
        draw.polygon(pts, fill=grey if filled else None, outline=grey, width=outline)
    else:
        draw.line((x0, y0, x1, y1), fill=grey, width=int(rng.integers(1, 4)))


def drawn_shapes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` drawn-shape images: uint8 (n, 3, size, size), the 28 px canvas centre-padded with black to ``size``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if not isinstance(size, int) or size < _CANVAS or (size - _CANVAS) % 2:
        raise ValueError(f"size: expected an integer >= {_CANVAS} with an even margin, got {size!r}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), np.uint8)
    pad = (size - _CANVAS) // 2
    for i in range(n):
        canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            _draw_one(draw, rng)
        out[i, pad:pad + _CANVAS, pad:pad + _CANVAS] = np.asarray(canvas)
    return torch.from_numpy(out)[:, None].repeat(1, 3, 1, 1).contiguous()
