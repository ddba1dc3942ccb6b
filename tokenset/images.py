"""Image values: the one uint8 <-> float conversion and the one PSNR (and SSIM) of the library.

Conventions: images are stored, shown and scored as uint8 in [0, 255]; networks see float32 in [-1, 1].

    to_float(uint8)                     -> float32 in [-1, 1]:   x = u / 127.5 - 1
    to_uint8(float, value_range=(-1, 1)) -> uint8 in [0, 255]:    u = round((x - lo) / (hi - lo) * 255)
    uint8_batch(images, value_range)    -> checked uint8 (N, C, H, W) (floats in [0, 1] or [0, 255] inferred)
    psnr(preds, target), ssim(...)      on uint8, per image, then averaged

``to_uint8`` is the only float -> uint8 mapping (torchvision's ``save_image`` rounding, computed in float64); by
default values outside ``value_range`` saturate at 0 / 255 (a decoder's output may overshoot [-1, 1] a little);
``clamp=False`` raises instead. PSNR is computed on uint8 images, exactly as the tables report it: the training
logs' ``val_psnr`` (``tokenset.train.evaluate_tokenizer``) quantises the reconstruction with ``to_uint8`` first and
calls the same ``psnr``. A ground module: it imports no other tokenset module.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["to_float", "to_uint8", "uint8_batch", "psnr", "ssim"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (any shape). Inverse: ``to_uint8``."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"to_float expects a uint8 tensor, got {got}")
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
             clamp: bool = True) -> torch.Tensor:
    """float in ``value_range`` -> uint8 [0, 255] (any shape, same device): round((x - lo) / (hi - lo) * 255).

    Values outside the range saturate at 0 / 255 (``clamp=True``) or raise ValueError (``clamp=False``); NaN or
    inf always raise. Inverse of ``to_float`` for the default range (-1, 1).
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"to_uint8 expects a floating tensor in {tuple(value_range)}, got {got}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range={tuple(value_range)} must have lo < hi")
    if images.numel():
        if not bool(torch.isfinite(images).all()):
            raise ValueError("to_uint8: images contain NaN or infinite values")
        lo_seen, hi_seen = float(images.min()), float(images.max())
        if not clamp and (lo_seen < lo or hi_seen > hi):
            raise ValueError(f"to_uint8: float values span [{lo_seen:.4g}, {hi_seen:.4g}], outside value_range "
                             f"[{lo:g}, {hi:g}]; clamp first or pass clamp=True")
    scaled = (images.double() - lo) * (255.0 / (hi - lo))
    return scaled.round().clamp_(0, 255).to(torch.uint8)


def uint8_batch(images: torch.Tensor, value_range: tuple[float, float] | None = None, what: str = "images",
                channels: int | None = 3) -> torch.Tensor:
    """Check a batch of images and return it as uint8 (N, C, H, W) on the CPU.

    ``images``: (N, C, H, W) with C = ``channels`` (any C when None), uint8 (taken as is) or float. Floats need
    ``value_range=(lo, hi)`` or lie in [0, 1] or [0, 255] (a batch with max <= 1 is read as [0, 1]); they are
    converted by ``to_uint8(images, value_range, clamp=False)``. Raises ValueError naming ``what`` for a wrong
    rank, channel count, dtype or value range.
    """
    if not torch.is_tensor(images):
        raise TypeError(f"{what}: expected a torch.Tensor (N, 3, H, W) or a folder path, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{what}: expected shape (N, C, H, W), got {tuple(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what}: expected {channels} channels (N, {channels}, H, W), got {images.shape[1]} "
                         f"channels in shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: got no images")
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        if value_range is not None:
            raise ValueError(f"{what}: value_range={value_range} was given for uint8 images, which are [0, 255]")
        return images
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected uint8 or float images, got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what}: contain NaN or infinite values")
    if value_range is None:
        lo_seen, hi_seen = images.min().item(), images.max().item()
        if lo_seen >= 0.0 and hi_seen <= 1.0:
            value_range = (0.0, 1.0)
        elif lo_seen >= 0.0 and hi_seen <= 255.0:
            value_range = (0.0, 255.0)
        else:
            raise ValueError(f"{what}: float values span [{lo_seen:.4g}, {hi_seen:.4g}], outside both [0, 1] and "
                             f"[0, 255]; pass value_range=(-1, 1) for decoder outputs, or clamp first")
    try:
        return to_uint8(images, value_range, clamp=False)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def _pair(a: torch.Tensor, b: torch.Tensor, value_range) -> tuple[torch.Tensor, torch.Tensor]:
    a = uint8_batch(a, value_range, "preds")
    b = uint8_batch(b, value_range, "target")
    if a.shape != b.shape:
        raise ValueError(f"preds and target differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def psnr(preds: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] | None = None,
         reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """PSNR in dB of uint8 [0, 255] images: 10 log10(255^2 / MSE), per image, then averaged (``reduction='mean'``).

    ``preds``, ``target``: (N, 3, H, W) uint8, or floats converted by ``uint8_batch`` (``value_range=(-1, 1)``
    for decoder outputs), so numbers match what is saved as 8-bit images. Identical images give inf.
    Returns a float64 scalar, or (N,) with ``reduction='none'``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    a, b = _pair(preds, target, value_range)
    mse = (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3))  # (N,)
    out = 10.0 * torch.log10(255.0**2 / mse)
    return out.mean() if reduction == "mean" else out


def ssim(preds: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] | None = None,
         reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """SSIM of uint8 images, data range 255: torchmetrics' definition (Gaussian window 11, sigma 1.5, k1 0.01,
    k2 0.03, reflect padding, variances clamped at 0, the mean over all pixels), computed in float64 with the
    window as two matrix products (the same numbers, tested against torchmetrics, at a fraction of the cost of its
    grouped 2-D convolution, which also asks for memory quadratic in the batch).

    Inputs as for ``psnr``; images must be at least 11 x 11. Per image, then averaged (``reduction='mean'``).
    """
    a, b = _pair(preds, target, value_range)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"ssim: images must be at least 11x11 (the Gaussian window), got {tuple(a.shape[-2:])}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    out = torch.cat([_ssim_chunk(a[i:i + 512].double(), b[i:i + 512].double()) for i in range(0, len(a), 512)])
    return out.mean() if reduction == "mean" else out


def _blur_matrix(size: int, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) float64 G with (G @ v)[i] = sum_k g_k v[reflect(i + k - pad)]: the Gaussian window over one axis
    with reflect padding, as a matrix (so the 2-D blur of x is G @ x @ G.T, a matmul instead of a convolution)."""
    pad = (window - 1) // 2
    dist = torch.arange(window, dtype=torch.float64) - pad
    g = torch.exp(-(dist / sigma) ** 2 / 2)
    g = g / g.sum()
    out = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for k in range(window):
            j = i + k - pad
            j = -j if j < 0 else 2 * (size - 1) - j if j >= size else j  # reflect (edge not repeated)
            out[i, j] += g[k]
    return out


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # x, y: (N, C, H, W) float64 in [0, 255] -> (N,) SSIM per image
    n, c, h, w = x.shape
    gh, gw = _blur_matrix(h), _blur_matrix(w)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    stack = torch.stack([x, y, x * x, y * y, x * y])  # (5, N, C, H, W)
    mu_x, mu_y, e_xx, e_yy, e_xy = gh @ stack @ gw.T
    var_x, var_y = (e_xx - mu_x ** 2).clamp(min=0.0), (e_yy - mu_y ** 2).clamp(min=0.0)
    cov = e_xy - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.reshape(n, -1).mean(dim=1)  # over every pixel and channel (torchmetrics 1.9 crops no border)
