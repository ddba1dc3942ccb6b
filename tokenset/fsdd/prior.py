"""The prior x0 of FSDD: random count vectors on the fixed-sum simplex, and rounding onto it."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenset.config import NoiseKind
from tokenset.fsdd.checks import _check_float_dtype, _check_int, _check_tensor


def fixed_sum_noise(batch: int, codebook_size: int, total: int, generator: torch.Generator | None = None,
                    kind: NoiseKind = NoiseKind.BINARY, device: torch.device | str | None = None) -> Tensor:
    """The prior x0 of FSDD (paper section 3, "Noise x0"): random vectors with every row summing to ``total``.

    BINARY (the official code): a uniformly random 0/1 vector with exactly ``total`` ones. When
    ``total > codebook_size`` every entry gets ``total // C`` and a uniformly random subset of ``total % C``
    entries one more, so the sum stays exact. MULTINOMIAL: ``total`` draws with replacement, uniform over the C
    positions. ``device``: where to build it (default: the generator's device, else CPU).
    Returns (B, C) int64, rows sum to total.
    """
    _check_int(batch, "batch", 1)
    _check_int(codebook_size, "codebook_size", 1)
    _check_int(total, "total", 0)
    if not isinstance(kind, NoiseKind):
        raise TypeError(f"kind must be a NoiseKind, got {kind!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    if kind is NoiseKind.BINARY:
        base, extra = divmod(total, codebook_size)
        out = torch.full((batch, codebook_size), base, dtype=torch.int64, device=device)
        if extra:
            # the `extra` largest of C i.i.d. uniforms sit at a uniformly random subset of positions
            scores = torch.rand(batch, codebook_size, generator=generator, device=device)
            chosen = scores.topk(extra, dim=1).indices  # (B, extra)
            out.scatter_(1, chosen, base + 1)
        return out
    draws = torch.randint(0, codebook_size, (batch, total), generator=generator, device=device)
    out = torch.zeros(batch, codebook_size, dtype=torch.int64, device=device)
    return out.scatter_add_(1, draws, torch.ones_like(draws))


def round_fixed_sum(x: Tensor, total: int) -> Tensor:
    """Largest-remainder rounding of non-negative real vectors onto integer vectors summing to ``total``.

    How the official code builds its prior from uniform noise. A row that does not sum to ``total`` is first
    rescaled to do so (``x * total / sum(x)``, in float64); rows already summing exactly to ``total`` are used as
    they are. Then every entry is floored and the ``total - sum(floor)`` entries with the largest fractional parts
    (lowest index first among equal fractions) get +1. Each entry ends within 1 of its (rescaled) value.
    x: (B, C) float, finite, >= 0, every row with a positive sum. Returns (B, C) int64, rows sum to total.
    """
    x = _check_tensor(x, "x", 2)
    _check_float_dtype(x, "x")
    _check_int(total, "total", 0)
    if not bool(torch.isfinite(x).all()) or (x.numel() and float(x.min()) < 0):
        raise ValueError("x must be finite and non-negative")
    x64 = x.double()
    sums = x64.sum(1, keepdim=True)
    if bool((sums <= 0).any()):
        raise ValueError("every row of x needs a positive sum to be rescaled to total; found a row of zeros")
    y = torch.where(sums == total, x64, x64 * (total / sums))
    floor = y.floor()
    frac = y - floor
    residual = total - floor.sum(1).long()  # (B,) in [0, C]: sum(floor) <= sum(y) < total + 1, > total - C
    if bool((residual < 0).any()) or bool((residual > x.shape[1]).any()):
        raise RuntimeError("round_fixed_sum: rescaled rows drifted from total by more than float64 rounding")
    order = torch.argsort(frac, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
    return floor.long() + (ranks < residual[:, None]).long()
