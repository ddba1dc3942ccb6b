"""The discretised Gaussian of FSDD's forward kernel: materialised (the reference) and sampled on a window."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenset.fsdd.checks import _check_mean_sigma, _one_thread

WINDOW_SIGMAS = 8.0
"""Window half-width of the fast discretised-Gaussian sampler: ceil(8 sigma) + 1 support points each side of the
support point nearest the mean. Every point outside has weight <= exp(-32) times that nearest point's weight, so
the truncated mass is at most (M + 1) * exp(-32) (1.6e-12 at M = 128) of the total; proof in _window_half_width."""

_CHUNK_ELEMENTS = 1 << 21  # elements of (positions, M + 1) per chunk: the kernel's windows, the model posterior
_WINDOW_TIERS = (2, 6, 24)  # window half-widths tried in turn; wider windows get the full support 0..M


def _nearest_support(mean: Tensor, total: int) -> Tensor:
    """The support point of 0..total nearest the mean (as a float tensor); half-integers round to even."""
    return mean.round().clamp(0, total)


def _neg_half_precision(sigma: Tensor) -> Tensor:
    """-1 / (2 sigma^2), clamped to the dtype's most negative finite value (sigma = 0 stays NaN-free below)."""
    return (-0.5 / (sigma * sigma)).clamp(min=-torch.finfo(sigma.dtype).max)


def _log_weight(k: Tensor, mean: Tensor, nearest: Tensor, neg_half_precision: Tensor) -> Tensor:
    """log of exp(-(k - mean)^2 / (2 sigma^2)) relative to the weight at the nearest support point n.

    Written as -(k - n)(k + n - 2 mean) / (2 sigma^2): exactly 0 at k = n and <= 0 elsewhere (the product is
    clamped at 0 against rounding), so exp() never overflows; with the finite clamp of -1 / (2 sigma^2), sigma -> 0
    gives 0 at n and -inf (or a huge negative number) elsewhere: a point mass at n instead of 0/0. Broadcasting.
    """
    d = k - nearest
    return d.mul_(k + nearest - 2.0 * mean).clamp_(min=0).mul_(neg_half_precision)


def discretised_gaussian(mean: Tensor, sigma: Tensor, total: int) -> Tensor:
    """The forward kernel's categorical (paper section 3, "discretise"): a Gaussian pdf over k = 0..total.

    p(k) = exp(-(k - mean)^2 / (2 sigma^2)) / sum_j exp(-(j - mean)^2 / (2 sigma^2)), per position. The support
    0..total matches the model's classes (the official code uses 0..total-1). Means outside [0, total] are
    allowed. sigma = 0 (or sigma so small the pdf underflows) gives a point mass at the support point nearest the
    mean (half and half on an exact tie) instead of NaN.
    mean, sigma: (B, C) float, finite, sigma >= 0. Returns probs (B, C, total + 1) in mean's dtype, summing to 1.
    """
    mean, sigma = _check_mean_sigma(mean, sigma, total)
    k = torch.arange(total + 1, dtype=mean.dtype, device=mean.device)
    nearest = _nearest_support(mean, total)
    w = _log_weight(k, mean[..., None], nearest[..., None], _neg_half_precision(sigma)[..., None]).exp_()
    return w / w.sum(-1, keepdim=True)


def _window_half_width(sigma: Tensor, total: int) -> Tensor:
    """Support points kept each side of the nearest point n: K = ceil(8 sigma) + 1 (int64, same shape), capped
    at total + 1 (a window of half-width total already covers the support 0..total).

    Truncation bound. For a support point k = n + j with |j| >= K, w(k) / w(n) = exp(-D / (2 sigma^2)) with
    D = (k - mean)^2 - (n - mean)^2. If mean lies in [0, M], |n - mean| <= 1/2 and |k - mean| >= |j| - 1/2, so
    D >= |j|(|j| - 1) >= K(K - 1); if mean < 0 (n = 0, k = j > 0), D = k^2 - 2k mean >= k^2 >= K(K - 1); mean > M
    is symmetric. K >= 8 sigma + 1 gives K(K - 1) >= 64 sigma^2, so w(k) <= exp(-32) w(n) <= exp(-32) Z: at most
    M + 1 such points hold at most (M + 1) exp(-32) of the mass.
    """
    return torch.ceil((sigma * WINDOW_SIGMAS).clamp(max=total)).long() + 1


def _inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Index j drawn with probability weights[j] / sum(weights) by inverse CDF with uniforms u in [0, 1).

    weights: (N, K) >= 0, each row with a positive entry; u: (N,). Returns (N,) int64: the first j whose
    cumulative weight exceeds u * total. The target is kept strictly below the total (u * total can round up to
    it), so the chosen entry always has positive weight (the cumulative sum only rises at positive entries).
    """
    cum = weights.cumsum(-1)
    total = cum[:, -1]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return (cum <= target[:, None]).sum(-1)


class _GaussianKernel:
    """The discretised Gaussian of every position, evaluated on windows of the support (see WINDOW_SIGMAS).

    Holds mean, sigma, the nearest support point and log Z (the windowed normaliser, relative to the nearest
    point's weight); prob_at(k) gives p(k) in closed form for any integer k (0 outside 0..total), which is what
    greedy adjustment needs, without the (B, C, total + 1) tensor. Positions are grouped by window width
    (_WINDOW_TIERS, then the widest remaining) and processed in chunks of about _CHUNK_ELEMENTS / 8 elements.
    """

    def __init__(self, mean: Tensor, sigma: Tensor, total: int) -> None:
        self.mean, self.total = mean, total  # (B, C) float
        self.nearest = _nearest_support(mean, total)
        self.nhp = _neg_half_precision(sigma)  # -1 / (2 sigma^2), (B, C)
        self.half = _window_half_width(sigma, total)  # (B, C) int64
        self.log_z: Tensor | None = None  # (B, C), set by evaluate()

    def _window(self, mean: Tensor, nearest: Tensor, nhp: Tensor, width: int,
                u: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(R,) positions, window offsets -width..width -> log Z (R,) and, given uniforms u (R,), a draw (R,)."""
        offsets = torch.arange(-width, width + 1, dtype=mean.dtype, device=mean.device)
        k = nearest[:, None] + offsets  # (R, 2 width + 1) support points
        outside = (k < 0) | (k > self.total)
        w = _log_weight(k, mean[:, None], nearest[:, None], nhp[:, None]).masked_fill_(outside, -math.inf).exp_()
        log_z = w.sum(-1).log_()
        if u is None:
            return log_z, None
        return log_z, nearest.long() + (_inverse_cdf(w, u) - width)

    @_one_thread
    def evaluate(self, u: Tensor | None = None) -> Tensor | None:
        """Compute log Z for every position; with uniforms u (B, C) also draw z ~ p (returned (B, C) int64).

        Point masses first: where both neighbours n +- 1 of the nearest point have weight <= exp(-32) w(n), every
        other support point has too (D_j >= |j| D_1, see _window_half_width), so z = n and log Z = 0 within the
        same (M + 1) exp(-32) bound, with no window (most positions: sigma = 1e-6 wherever x0_hat = x1_hat).
        """
        mean, nearest, nhp, half = (x.reshape(-1) for x in (self.mean, self.nearest, self.nhp, self.half))
        offset = nearest - mean
        d_min = torch.minimum(torch.where(nearest < self.total, 1.0 + 2.0 * offset, math.inf),
                              torch.where(nearest > 0, 1.0 - 2.0 * offset, math.inf))
        spread = (d_min * nhp > -32.0).nonzero().squeeze(1)  # not a point mass (nhp = -1 / (2 sigma^2))
        log_z = torch.zeros_like(mean)
        out = nearest.long() if u is not None else None
        if spread.numel() == 0:
            self.log_z = log_z.view_as(self.mean)
            return out.view_as(self.mean) if out is not None else None
        u_flat = u.reshape(-1) if u is not None else None
        half_spread = half[spread]
        remaining = torch.ones(spread.numel(), dtype=torch.bool, device=mean.device)
        for tier in (*_WINDOW_TIERS, None):
            pick = remaining if tier is None else remaining & (half_spread <= tier)
            rows = spread[pick]
            if rows.numel() == 0:
                continue
            remaining &= ~pick
            width = min(int(half[rows].max()) if tier is None else tier, self.total)
            chunk = max(1, (_CHUNK_ELEMENTS // 8) // (2 * width + 1))
            for s in range(0, rows.numel(), chunk):
                r = rows[s:s + chunk]
                lz, draw = self._window(mean[r], nearest[r], nhp[r], width,
                                        None if u_flat is None else u_flat[r])
                log_z[r] = lz
                if out is not None:
                    out[r] = draw
            if not bool(remaining.any()):
                break
        self.log_z = log_z.view_as(self.mean)
        return out.view_as(self.mean) if out is not None else None

    def prob_at(self, k: Tensor) -> Tensor:
        """p(k) at integer k: (B, C) int64. Returns (B, C) float."""
        if self.log_z is None:
            self.evaluate()
        lw = _log_weight(k.to(self.mean.dtype), self.mean, self.nearest, self.nhp)
        p = lw.sub_(self.log_z).exp_()
        return p.masked_fill_((k < 0) | (k > self.total), 0.0)


@_one_thread
def sample_discretised_gaussian(mean: Tensor, sigma: Tensor, total: int,
                                generator: torch.Generator | None = None) -> Tensor:
    """Draw z ~ discretised_gaussian(mean, sigma, total) at every position independently (no sum constraint).

    The same categorical as ``discretised_gaussian`` (not a rounded continuous Gaussian), sampled by inverse CDF on
    a window of ceil(8 sigma) + 1 support points each side of the point nearest the mean: the omitted mass is at
    most (M + 1) exp(-32) of the total (see WINDOW_SIGMAS). One uniform per position.
    mean, sigma: (B, C) float. Returns (B, C) int64 in [0, total].
    """
    mean, sigma = _check_mean_sigma(mean, sigma, total)
    u = torch.rand(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return _GaussianKernel(mean, sigma, total).evaluate(u)
