"""FSDD's input checks, and _one_thread: the intra-op thread policy of FSDD's own work."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch import Tensor

_F = TypeVar("_F", bound=Callable)


def _one_thread(fn: _F) -> _F:
    """Run fn with one intra-op thread (restored afterwards, also on an error), for this module's own work.

    Its operations are many and small ((B, C) vectors, chunks of rows): with several intra-op threads each one
    ends on a barrier, which waits a whole scheduler slice whenever another process holds a core. The model is
    not affected: FSDD.sample calls it outside, with the caller's threads.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        if before == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper  # type: ignore[return-value]


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def _check_tensor(x: object, name: str, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_integer_dtype(x: Tensor, name: str) -> None:
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must have an integer dtype (int64 counts), got {x.dtype}")


def _check_float_dtype(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def _check_entries(z: Tensor, total: int, name: str) -> Tensor:
    """z: (B, C) integer with entries in [0, total] -> int64."""
    _check_tensor(z, name, 2)
    _check_integer_dtype(z, name)
    z = z.long()
    if z.numel():
        low, high = (int(v) for v in torch.aminmax(z))
        if low < 0 or high > total:
            raise ValueError(f"{name} entries must lie in [0, {total}], got min {low}, max {high}")
    return z


def _check_counts(counts: object, total: int, codebook_size: int, name: str = "counts") -> Tensor:
    """counts: (B, C) integer, non-negative, every row summing to total -> int64."""
    counts = _check_tensor(counts, name, 2)
    _check_integer_dtype(counts, name)
    if counts.shape[1] != codebook_size:
        raise ValueError(f"{name} must have C = {codebook_size} columns, got shape {tuple(counts.shape)}")
    if counts.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one row, got shape {tuple(counts.shape)}")
    counts = counts.long()
    if int(counts.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(counts.min())}")
    sums = counts.sum(1)
    bad = (sums != total).nonzero()
    if bad.numel():
        row = int(bad[0, 0])
        raise ValueError(f"{name} rows must sum to M = {total}; row {row} sums to {int(sums[row])} "
                         f"({bad.shape[0]} bad rows)")
    return counts


def _check_mean_sigma(mean: object, sigma: object, total: int) -> tuple[Tensor, Tensor]:
    mean = _check_tensor(mean, "mean", 2)
    _check_float_dtype(mean, "mean")
    if not isinstance(sigma, Tensor):
        raise TypeError(f"sigma must be a torch.Tensor, got {type(sigma).__name__}")
    _check_float_dtype(sigma, "sigma")
    if sigma.shape != mean.shape:
        raise ValueError(f"sigma must have the shape of mean {tuple(mean.shape)}, got {tuple(sigma.shape)}")
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("mean must be finite")
    if not bool(torch.isfinite(sigma).all()) or (sigma.numel() and float(sigma.min()) < 0):
        raise ValueError("sigma must be finite and non-negative")
    _check_int(total, "total", 0)
    return mean, sigma.to(mean.dtype)


def _check_on_simplex(x: Tensor, total: int, what: str) -> None:
    """The invariant: int64, entries >= 0, rows summing to total. A failure is a bug in this module."""
    if x.dtype != torch.int64 or int(x.min()) < 0 or bool((x.sum(1) != total).any()):
        raise RuntimeError(f"FSDD invariant broken: {what} is not a non-negative int64 vector summing to {total}")
