"""The two parts of the official tokenizer that compute something no module of ours computes, as drop-in modules.

``ScrambledTokenProjection`` is the official encoder's read-out (its latents are reshaped, not transposed, before a
1x1 convolution); ``OfficialPixelHead`` is the official decoder's pixel path (a 1x1-conv/tanh "ffn" to 256 channels
and MaskGIT-VQGAN's decoder, re-implemented from its layout). ``adapt_tokenizer`` swaps them into a ``SetTokenizer``
(``encoder.to_token`` and ``decoder.head``) so that the official weights load into it exactly. Why each differs:
the module docstring of ``tokenset.official``, which loads the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.tokenizer import SetTokenizer

__all__ = ["ScrambledTokenProjection", "OfficialPixelHead", "adapt_tokenizer"]

_MASKGIT_MULTS = (1, 1, 2, 2, 4)  # MaskGIT-VQGAN's channel multipliers (the official decoder's)
_Z_CHANNELS = 256  # channels between the official decoder's ffn and its pixel decoder


class ScrambledTokenProjection(nn.Module):
    """The official encoder's read-out: latents (B, M, W) reshaped (not transposed) to (B, W, M), then a 1x1
    convolution W -> D per column: returns (B, M, D). Parameters ``weight`` (D, W) and ``bias`` (D,), named and
    shaped like the ``nn.Linear`` it replaces."""

    def __init__(self, width: int, token_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(token_dim, width))
        self.bias = nn.Parameter(torch.zeros(token_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, w = x.shape
        scrambled = x.reshape(b, w, m)  # what the official code does; deliberately not x.transpose(1, 2)
        return torch.einsum("dw,bwm->bmd", self.weight, scrambled) + self.bias


class _MaskGitResBlock(nn.Module):
    """GroupNorm(32, eps 1e-6) -> SiLU -> 3x3 conv (no bias), twice; when the width changes the shortcut is a 1x1
    conv of the block's OUTPUT (the official layout), else the identity of its input."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(32, c_out, eps=1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class _MaskGitUp(nn.Module):
    def __init__(self, c_in: int, c_out: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([_MaskGitResBlock(c_in, c_out), _MaskGitResBlock(c_out, c_out)])
        self.upsample_conv = nn.Conv2d(c_out, c_out, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class _MaskGitDecoder(nn.Module):
    """MaskGIT-VQGAN's decoder: z (B, 256, g, g) -> pixels (B, 3, g * 2^(L-1), ...) in [0, 1] (unclamped)."""

    def __init__(self, hidden: int, mults: tuple[int, ...], channels: int) -> None:
        super().__init__()
        top = hidden * mults[-1]
        self.conv_in = nn.Conv2d(_Z_CHANNELS, top, 3, padding=1)
        self.mid = nn.ModuleList([_MaskGitResBlock(top, top), _MaskGitResBlock(top, top)])
        n = len(mults)
        self.up = nn.ModuleList(
            _MaskGitUp(hidden * mults[min(i + 1, n - 1)], hidden * mults[i], upsample=i != 0) for i in range(n))
        self.norm_out = nn.GroupNorm(32, hidden * mults[0], eps=1e-6)
        self.conv_out = nn.Conv2d(hidden * mults[0], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for blk in reversed(self.up):  # coarsest level first
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class OfficialPixelHead(nn.Module):
    """The official decoder's pixel path, as a drop-in ``decoder.head``: grid features (B, N, W) -> (B, W, g, g)
    -> ffn (1x1 conv W -> 2W, tanh, 1x1 conv 2W -> 256) -> MaskGIT-VQGAN decoder -> [0, 1] -> 2x - 1 (B, 3, H, W).

    ``hidden`` must be a multiple of 32 (GroupNorm with 32 groups); log2(patch) upsamplings."""

    def __init__(self, width: int, patch: int, grid: int, channels: int, hidden: int) -> None:
        super().__init__()
        ups = int(round(math.log2(patch)))
        if 2 ** ups != patch or ups < 1:
            raise ValueError(f"OfficialPixelHead: patch_size must be a power of two >= 2, got {patch}")
        if hidden % 32:
            raise ValueError(f"OfficialPixelHead: head_channels must be a multiple of 32 (GroupNorm), got {hidden}")
        self.grid = grid
        self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.Tanh(), nn.Conv2d(2 * width, _Z_CHANNELS, 1))
        self.pixel = _MaskGitDecoder(hidden, _maskgit_mults(ups), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        x = x.transpose(1, 2).reshape(b, w, self.grid, self.grid)
        return 2.0 * self.pixel(self.ffn(x)) - 1.0


def _maskgit_mults(ups: int) -> tuple[int, ...]:
    return _MASKGIT_MULTS[-(ups + 1):] if ups + 1 <= len(_MASKGIT_MULTS) else (1,) * (ups + 1 - 5) + _MASKGIT_MULTS


def adapt_tokenizer(model: SetTokenizer) -> SetTokenizer:
    """Swap the two parts of ``model`` whose official counterparts compute something else (see module docstring):
    ``encoder.to_token`` -> ScrambledTokenProjection, ``decoder.head`` -> OfficialPixelHead. In place; returns it."""
    cfg = model.cfg
    if cfg.ordered or cfg.decoder_input != "set":
        raise ValueError(f"official tokenizer weights need ordered=False and decoder_input='set', got "
                         f"ordered={cfg.ordered}, decoder_input={cfg.decoder_input!r}")
    model.encoder.to_token = ScrambledTokenProjection(cfg.width, cfg.token_dim)
    model.decoder.head = OfficialPixelHead(cfg.decoder_width, cfg.patch_size, cfg.grid, cfg.channels_in,
                                           cfg.head_channels)
    return model
