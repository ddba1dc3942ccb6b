"""Fixed-Sum Discrete Diffusion (FSDD), paper section 3: the process over count vectors, no network code.

State: a count vector ``x: (B, C) int64`` with entries in ``[0, M]`` and every row summing to ``M`` (the token
multiset of one image, ``C`` = codebook size, ``M`` = tokens per image). Time runs from ``t = 0`` (the prior
``x0``) to ``t = 1`` (the data ``x1``). The network is any callable ``model(z, t, labels) -> logits (B, C, M + 1)``;
this module knows nothing about its architecture (tokenset/denoiser.py).

Paper step -> function::

    prior x0 (a random fixed-sum vector)            fixed_sum_noise, round_fixed_sum
    forward kernel q(z_t | x0, x1)                  FSDD.q_sample: mean t*x1 + (1-t)*x0, sigma |x1-x0|/4 + 1e-6,
                                                    discretised_gaussian / sample_discretised_gaussian,
                                                    then greedy_adjust (greedy_adjust_gaussian)
    loss: cross-entropy to x1 at all C positions    FSDD.training_loss
    sampler (25 steps, top-p 0.8, CFG, sigmoid f)   FSDD.sample (classifier_free_guidance, top_p_sample)

THE INVARIANT (stronger than the official code, which enforces the sum on x1_hat only for t >= 0.65 and falls
back silently on errors): every state the sampler produces, every predicted x1_hat, and every z_t of the training
kernel has non-negative integer entries summing exactly to M. The sampler checks it at every step and raises
RuntimeError if it ever fails (it cannot, by construction; the check is cheap insurance, not a fallback).

Greedy adjustment semantics (``greedy_adjust``). With ``d = M - sum(z)`` the paper moves ``|d|`` DISTINCT
positions by +1 (deficit) or -1 (excess), choosing the positions whose probability gains most
(``p(z+1) - p(z)`` resp. ``p(z-1) - p(z)``), entries staying in ``[0, M]``. When fewer than ``|d|`` positions can
move (``|d| > C``, or an excess with fewer non-zero entries), the same move is repeated in ROUNDS: each round moves
``min(|remaining d|, #movable positions)`` distinct positions by one unit, picking the largest gains recomputed
after the previous round, until the sum is exact. A single round is the paper's (and official code's) rule.
Rounds rather than "one unit at a time, recompute, repeat" because the latter concentrates the whole deficit on a
single position as soon as a position leaves a point mass (its next gain 0 - 0 = 0 beats every other -1).
Ties between equal gains: lowest position index first (deterministic), or uniformly random with
``random_ties=True`` (what the sampler and the training kernel use, so that no code index is favoured).

Fast paths (same distributions as the materialised definitions, which stay public as references and are tested
against them; benchmarks/bench_fsdd.py measures both):
- the discretised Gaussian is sampled by inverse CDF on a window of the support around the mean instead of
  materialising all M + 1 probabilities (positions that are point masses to within exp(-32) need no window); the
  window holds all but a relative mass of at most (M + 1) exp(-32);
- greedy adjustment of z_t computes the probabilities it needs at z-1, z, z+1 in closed form from (mean, sigma);
- the model's p(x1 | z_t) is normalised chunk by chunk in a small scratch buffer: nothing of size (B, C, M + 1)
  is written; greedy adjustment of x1_hat gets p(k) in closed form from one read of the logits and the
  log-normaliser kept per position. Before the softmax, logits more than 80 below their row's largest are raised
  to (largest - 80): exp(-80) is still a normal float32, where the exact values would be denormals, which slow
  the softmax several times on CPU; the probability this moves is at most (M + 1) exp(-80) < 1e-32 a position.
  Top-p is exact: where the most probable class holds top_p of the mass the nucleus is that class; elsewhere one
  max over the row with that class masked finds the second, and where the two hold top_p the nucleus is that
  pair; elsewhere the 8 most probable classes are looked at (topk) and only positions whose nucleus is larger
  are fully sorted.
- greedy adjustment works on whole batches (no per-round gathering of unfinished rows), reads p(k) by one take
  at flat indices whose base is built once (no (B, C) row and column index tensors per read); greedy_adjust
  checks the entries of its (B, C, M + 1) input that it reads, not the whole tensor (see its docstring).
- this module's own work runs with one intra-op thread (_one_thread; the model keeps the caller's threads):
  its operations are many and small, and with two threads each ends on a barrier that waits a scheduler slice
  whenever another process holds a core (results/bench/fsdd.md: the ratios with --load 1).

Sampling returns the final state z_1; with the SIGMOID or LINEAR sigma schedule it equals the last x1_hat.
Classifier-free guidance uses the null label ``num_classes`` (CountDiT's extra label row) unless told otherwise.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenset.config import FSDDConfig, NoiseKind, SigmaSchedule

__all__ = [
    "FSDD",
    "Model",
    "SIGMA_EPS",
    "WINDOW_SIGMAS",
    "classifier_free_guidance",
    "discretised_gaussian",
    "fixed_sum_noise",
    "greedy_adjust",
    "greedy_adjust_gaussian",
    "round_fixed_sum",
    "sample_discretised_gaussian",
    "sigma_scale",
    "top_p_sample",
]

Model = Callable[[Tensor, Tensor, Tensor], Tensor]
"""model(z (B, C) int64, t (B,) float32 in [0, 1], labels (B,) int64) -> logits (B, C, M + 1) float."""

SIGMA_EPS = 1e-6
"""Added to every sigma of the kernel (the paper's 1e-6). The discretisation is exact for sigma = 0 anyway."""

WINDOW_SIGMAS = 8.0
"""Window half-width of the fast discretised-Gaussian sampler: ceil(8 sigma) + 1 support points each side of the
support point nearest the mean. Every point outside has weight <= exp(-32) times that nearest point's weight, so
the truncated mass is at most (M + 1) * exp(-32) (1.6e-12 at M = 128) of the total; proof in _window_half_width."""

_WINDOW_TIERS = (2, 6, 24)  # window half-widths tried in turn; wider windows get the full support 0..M
_CHUNK_ELEMENTS = 1 << 21  # elements of (positions, M + 1) processed per chunk of the model posterior
_LOGIT_FLOOR = 80.0  # logits further below their row's largest are raised to (largest - this) before softmax
_NUCLEUS_FIRST = 8  # classes looked at (topk) before sorting a position's whole distribution for top-p


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


# ============================================================================================ input checks


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


# ============================================================================================ prior


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


# ============================================================================================ discretised Gaussian


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


# ============================================================================================ greedy adjustment


def _ordered_key(gain: Tensor) -> Tensor:
    """float32 -> int64 with the same order (IEEE bit trick: negative floats have their magnitude bits flipped)."""
    bits = (gain.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()


def _top_r(gain: Tensor, immovable: Tensor, r: Tensor, tiebreak: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """Per row, the r movable positions with the largest gains, equal gains ordered by larger tiebreak.

    gain: (R, C) float, a scratch this function overwrites; immovable: (R, C) bool; r: (R,) int64 with
    0 <= r <= number of movable positions (rows with r = 0 choose nothing, whatever their immovable); tiebreak() -> (R, C) int64 in [0, 2^31), called only when needed.
    Returns (index (R, K) int64, take (R, K) bool): the chosen positions of row i are index[i][take[i]], exactly
    r[i] distinct movable ones (the others in a row are unused). The tiebreak decides the set only where a row's
    r-th and (r + 1)-th largest gains are equal: one topk of the gains settles every other row, and the rows with
    such a tie add their tied part from the positions equal to the r-th gain alone.
    """
    kmax = int(r.max())
    gain = gain.masked_fill_(immovable, float("-inf"))  # movable gains are finite: strictly above
    places = torch.arange(kmax + 1, device=gain.device)[None, :]
    if kmax == gain.shape[1]:  # some row moves every position: no (r + 1)-th place to compare with
        return _top_r_by_key(gain, r, kmax, tiebreak), places[:, :kmax] < r[:, None]
    values, top = gain.topk(kmax + 1, dim=1, sorted=True)
    last = values.gather(1, (r - 1).clamp(min=0)[:, None])  # the r-th largest gain (rows with r = 0: unused)
    tied = ((last == values.gather(1, r[:, None])) & (r[:, None] > 0))[:, 0]  # a tie across the r-th place
    if not bool(tied.any()):
        return top[:, :kmax], places[:, :kmax] < r[:, None]
    above = (values > last).sum(1)  # all positions above the r-th gain are among the kmax + 1 largest
    above = torch.where(tied, above, r)
    need = r - above  # tied positions still to choose per row (0 where no tie)
    equal = gain == last.masked_fill_(~tied[:, None], math.nan)  # the tied positions of the tied rows
    key = torch.where(equal, tiebreak(), -1)  # -1 < every tiebreak: the tied positions come first
    width = int(need.max())
    index = torch.cat((top[:, :kmax], key.topk(width, dim=1, sorted=True).indices), 1)
    take = torch.cat((places[:, :kmax] < above[:, None], places[:, :width] < need[:, None]), 1)
    return index, take


def _top_r_by_key(gain: Tensor, r: Tensor, kmax: int, tiebreak: Callable[[], Tensor]) -> Tensor:
    """_top_r's index by a full ranking on (gain, tiebreak): the kmax largest per row, (R, kmax) int64.
    gain: (R, C), -inf where not movable."""
    tb = tiebreak()
    if gain.dtype == torch.float64:  # exact order in float64: stable sort by gain after sorting by tiebreak
        pre = torch.argsort(tb, dim=1, descending=True, stable=True)
        post = torch.sort(gain.gather(1, pre), dim=1, descending=True, stable=True).indices
        return pre.gather(1, post[:, :kmax])
    # float32 (half types widen exactly): one topk on a composite (gain, tiebreak) int64 key
    return (_ordered_key(gain) * (1 << 32) + tb).topk(kmax, dim=1, sorted=True).indices


def _greedy_rounds(z: Tensor, gains: Callable[[Tensor, Tensor], Tensor], total: int, random_ties: bool,
                   generator: torch.Generator | None) -> Tensor:
    """Greedy adjustment in rounds (module docstring). z: (B, C) int64 in [0, total]; gains(z, step) ->
    p(z + step) - p(z) (B, C) float for step (B, 1) in {-1, 0, 1}, any value where z + step leaves 0..total. Runs
    with the caller's threads: the sampler calls it under _one_thread; greedy_adjust, on a materialised tensor,
    reads it faster with all of them.

    Each round moves min(|d|, #movable) distinct positions of every unfinished row by one unit towards the sum,
    the movable positions with the largest gains p(z +- 1) - p(z) first. A deficit row can move every position
    (its sum is below total, so no entry is at total); an excess row has a non-zero entry; so each round moves
    at least one unit and the loop ends: within ceil(|d| / C) rounds for a deficit, total + 1 for an excess.
    Every round works on all B rows (finished rows move r = 0 positions): almost always one round does it all,
    and whole-batch operations beat gathering and scattering the unfinished rows. The chosen positions are added
    to a copy of z by index (R, K), not through a (B, C) mask.
    """
    deficit = total - z.sum(1)  # (B,)
    z = z.clone()
    if not bool(deficit.any()):
        return z
    size = z.shape[1]
    while True:
        step = deficit.sign()[:, None]  # (B, 1): +1 deficit, -1 excess, 0 done
        # a deficit row moves entries below total, an excess row entries above 0 (a finished row: r = 0)
        immovable = z == torch.where(step > 0, total, 0)
        n_movable = size - immovable.sum(1)
        r = torch.minimum(deficit.abs(), n_movable)  # (B,)
        if bool(((r == n_movable) | (step[:, 0] == 0)).all()):
            z.sub_(immovable.long().sub_(1).mul_(step))  # every movable position of an unfinished row moves
        else:
            gain = gains(z, step)

            def tiebreak() -> Tensor:
                if random_ties:
                    return torch.randint(0, 1 << 31, z.shape, generator=generator, device=z.device)
                return (size - 1 - torch.arange(size, device=z.device)).expand_as(z)  # lowest index first

            index, take = _top_r(gain, immovable, r, tiebreak)
            z.scatter_add_(1, index, take.long().mul_(step))
        deficit = deficit - step[:, 0] * r
        if not bool(deficit.any()):
            return z


def _gains_of(prob_at: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """_greedy_rounds' gains(z, step) = p(z + step) - p(z) from p(k) at integer k (B, C)."""
    return lambda z, step: prob_at(z + step).sub_(prob_at(z))


def greedy_adjust(z: Tensor, probs: Tensor, total: int, *, random_ties: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
    """Greedy adjustment (paper section 3): restore every row's sum to exactly ``total`` by +-1 moves.

    With d = total - sum(z): |d| distinct positions move by +1 (d > 0) or -1 (d < 0), those with the largest
    probability gain p(z + 1) - p(z) resp. p(z - 1) - p(z) first, entries staying in [0, total]; if fewer than
    |d| positions can move, this repeats in rounds with recomputed gains (module docstring). Rows already summing
    to total are returned unchanged. Ties: lowest index first, or uniformly random (random_ties=True, drawn from
    generator). Gains are ranked exactly in float32 (float16/bfloat16 widen exactly) or float64.
    z: (B, C) integer in [0, total]; probs: (B, C, total + 1) float, >= 0 (normalisation not required). The
    entries it reads (p at z and at z + 1 or z - 1, in each round that ranks gains) must be finite and >= 0
    (ValueError otherwise); the others are neither read nor checked: one pass over the whole tensor costs about
    as much as the adjustment itself (benchmarks/bench_fsdd.py prints both; results/bench/fsdd.md).
    Returns (B, C) int64, rows sum to total.
    """
    _check_int(total, "total", 0)
    z = _check_entries(z, total, "z")
    probs = _check_tensor(probs, "probs", 3)
    _check_float_dtype(probs, "probs")
    if probs.shape != (*z.shape, total + 1):
        raise ValueError(f"probs must have shape {(*z.shape, total + 1)} (z's shape, total + 1 classes), "
                         f"got {tuple(probs.shape)}")

    def gains(z: Tensor, step: Tensor) -> Tensor:  # p(z + step) - p(z): adjacent entries, read in one gather
        at = torch.empty((*z.shape, 2), dtype=torch.int64, device=z.device)  # (z, z + 1) for +1, (z - 1, z) for -1
        low = torch.sub(z, (step < 0).long(), out=at[..., 0]).clamp_(0, total - 1)
        torch.add(low, 1, out=at[..., 1])
        pair = probs.gather(2, at)  # adjacent entries: one cache line, one page; checked as read
        low_value, high_value = torch.aminmax(pair)  # NaN propagates: min >= 0 and max < inf: all finite
        if not (float(low_value) >= 0 and float(high_value) < math.inf):
            raise ValueError(f"probs must be finite and non-negative where greedy adjustment reads them, got "
                             f"values in [{float(low_value)}, {float(high_value)}]")
        if pair.dtype in (torch.float16, torch.bfloat16):
            pair = pair.float()
        return (pair[..., 1] - pair[..., 0]).mul_(step)  # where z + step leaves 0..total: unused

    return _greedy_rounds(z, gains, total, random_ties, generator)


class _ClassReader:
    """p[b, c, k[b, c]] for integer k (B, C) from a (B, C, K) tensor: one take at flat indices
    (b * C + c) * K + k, the base built once (no (B, C) row and column index tensors per read); 0 outside 0..K-1.
    """

    def __init__(self, values: Tensor) -> None:
        batch, size, self.classes = values.shape
        self.values = values
        self.base = torch.arange(batch * size, device=values.device).view(batch, size) * self.classes

    def at(self, k: Tensor) -> Tensor:
        p = self.values.take(self.base + k.clamp(0, self.classes - 1))
        return p.masked_fill_((k < 0) | (k >= self.classes), 0.0)



@_one_thread
def greedy_adjust_gaussian(z: Tensor, mean: Tensor, sigma: Tensor, total: int, *, random_ties: bool = False,
                           generator: torch.Generator | None = None) -> Tensor:
    """``greedy_adjust(z, discretised_gaussian(mean, sigma, total), total)`` without the (B, C, total + 1) tensor.

    The probabilities at z - 1, z, z + 1 (and wherever later rounds need them) come in closed form from
    (mean, sigma), normalised on the window of ``sample_discretised_gaussian`` (relative error <= (M+1) exp(-32)).
    z: (B, C) integer in [0, total]; mean, sigma: (B, C) float. Returns (B, C) int64, rows sum to total.
    """
    mean, sigma = _check_mean_sigma(mean, sigma, total)
    z = _check_entries(z, total, "z")
    if z.shape != mean.shape:
        raise ValueError(f"z must have the shape of mean {tuple(mean.shape)}, got {tuple(z.shape)}")
    kernel = _GaussianKernel(mean, sigma, total)
    kernel.evaluate()
    return _greedy_rounds(z, _gains_of(kernel.prob_at), total, random_ties, generator)


# ============================================================================================ model posterior


def classifier_free_guidance(logits_cond: Tensor, logits_uncond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance on probabilities, as the paper and the official code do it.

    p = p_u + g (p_c - p_u) with p_c = softmax(logits_cond), p_u = softmax(logits_uncond); clamped at 0 and
    renormalised per position. The sum before clamping is 1, after it >= 1, so renormalising never divides by 0.
    g = 1: the conditional model; g = 0: the unconditional one.
    logits_*: (B, C, K) float. Returns probs (B, C, K) float32, summing to 1 over K.
    """
    p_c = torch.softmax(logits_cond.float(), -1)
    p_u = torch.softmax(logits_uncond.float(), -1)
    p = (p_u + guidance * (p_c - p_u)).clamp_(min=0)
    return p / p.sum(-1, keepdim=True)


def _nucleus_weights(probs_sorted: Tensor, top_p: float) -> Tensor:
    """probs sorted in descending order (N, K) -> the nucleus' weights: entry j kept iff the mass before it is
    below top_p (the smallest prefix holding top_p of the mass), zero elsewhere."""
    before = probs_sorted.cumsum(-1) - probs_sorted
    keep = before < top_p
    keep[:, 0] = True
    return probs_sorted * keep


def _nucleus_draw(probs: Tensor, u: Tensor, top_p: float) -> Tensor:
    """top_p_sample's draw for rows of normalised probs (N, K) with uniforms u (N,): (N,) int64 classes.

    Looks at the _NUCLEUS_FIRST most probable classes (topk) first: where they hold top_p of the mass the nucleus lies
    among them (the class after them has top_p or more before it), so the draw is exact; only the other rows are
    fully sorted. Equal probabilities may be ordered differently from the stable sort (same distribution).
    """
    k, first = probs.shape[-1], _NUCLEUS_FIRST
    out = torch.empty(probs.shape[0], dtype=torch.int64, device=probs.device)
    if first < k:
        values, order = probs.topk(first, dim=-1, sorted=True)
        inside = values.cumsum(-1)[:, -1] >= top_p  # the same sum as the sorted cumulative mass
        if bool(inside.all()):  # no row needs its whole distribution sorted: no copies
            j = _inverse_cdf(_nucleus_weights(values, top_p), u)
            return order.gather(1, j[:, None]).squeeze(1)
        rows = inside.nonzero().squeeze(1)
        if rows.numel():
            j = _inverse_cdf(_nucleus_weights(values[rows], top_p), u[rows])
            out[rows] = order[rows].gather(1, j[:, None]).squeeze(1)
        rows = (~inside).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        probs, u = probs[rows], u[rows]
    else:
        rows = None
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    j = _inverse_cdf(_nucleus_weights(sorted_p, top_p), u)
    drawn = order.gather(1, j[:, None]).squeeze(1)
    if rows is None:
        return drawn
    out[rows] = drawn
    return out


def _nucleus_of_two_or_more(probs: Tensor, u: Tensor, top: Tensor, arg: Tensor, top_p: float) -> Tensor:
    """_nucleus_draw for rows whose top class holds less than top_p: probs (N, K) normalised, a scratch this
    function may change; u (N,) uniforms; top, arg (N,): the largest probability and its first class.

    The second most probable class comes from one max over the rows with the first one masked; where the two
    hold top_p, the nucleus is that pair (the first maximal class before the second in the stable order) and
    the draw is the inverse CDF over it; only the other rows go on to _nucleus_draw. Returns (N,) int64.
    """
    probs.scatter_(1, arg[:, None], -1.0)
    second, arg2 = probs.max(-1)
    pair = top + second  # the cumulative mass of the sorted distribution after two classes
    target = torch.minimum(u * pair, torch.nextafter(pair, torch.zeros_like(pair)))
    out = torch.where(top <= target, arg2, arg)
    wider = pair < top_p
    if not bool(wider.any()):
        return out
    probs.scatter_(1, arg[:, None], top[:, None])  # restored
    rows = wider.nonzero().squeeze(1)
    if rows.numel() == probs.shape[0]:
        return _nucleus_draw(probs, u, top_p)
    out[rows] = _nucleus_draw(probs.index_select(0, rows), u.index_select(0, rows), top_p)
    return out


def top_p_sample(probs: Tensor, top_p: float, generator: torch.Generator | None = None) -> Tensor:
    """Nucleus (top-p) sampling at every position: the materialised definition (the sampler's fast path equals it).

    The nucleus is the smallest set of most probable classes holding at least top_p of the mass (classes sorted by
    descending probability, lowest class first among equal ones); the draw is by inverse CDF over the nucleus in
    that order with one uniform per position. top_p = 1: no truncation, inverse CDF in class order.
    probs: (B, C, K) float >= 0, normalised over K. Returns (B, C) int64 in [0, K).
    """
    probs = _check_tensor(probs, "probs", 3)
    _check_float_dtype(probs, "probs")
    top_p = _check_top_p(top_p)
    batch, size, k = probs.shape
    u = torch.rand(batch, size, generator=generator, device=probs.device)
    flat = probs.float().reshape(-1, k)
    if top_p >= 1.0:
        return _inverse_cdf(flat, u.reshape(-1)).view(batch, size)
    sorted_p, order = torch.sort(flat, dim=-1, descending=True, stable=True)
    j = _inverse_cdf(_nucleus_weights(sorted_p, top_p), u.reshape(-1))
    return order.gather(1, j[:, None]).view(batch, size)


def _check_top_p(top_p: object) -> float:
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
        raise TypeError(f"top_p must be a number in (0, 1], got {type(top_p).__name__}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    return float(top_p)


def _softmax_into(logits: Tensor, out: Tensor) -> Tensor:
    """softmax over the last dim written into ``out`` (a scratch buffer; it may be logits itself).
    logits, out: (N, K) float32. Returns out (NaN at positions with a NaN or +inf logit or all logits -inf)."""
    torch.ops.aten._softmax.out(logits, -1, False, out=out)
    return out


def _check_finite_probs(p_max: Tensor) -> None:
    # softmax gives NaN everywhere at a position with a NaN or +inf logit, or with all logits -inf
    if not bool(torch.isfinite(p_max).all()):
        raise ValueError("the model returned NaN or +inf logits, or a position whose logits are all -inf")


class _ModelPosterior:
    """p(x1 | z_t) at every position from the model's logits, optionally guided (classifier_free_guidance).

    Nothing of size (B, C, K) is written. ``draw`` normalises the logits chunk by chunk in a small scratch buffer,
    samples x1_hat with exact top-p, and keeps per position only what ``prob_at`` needs to give p(k) at any
    integer k in closed form from one read of the logits: the log-normaliser of each softmax (read off its
    largest probability p_j: log Z = logit_j - log p_j) and, when guiding, the sum of the clamped mix.
    logits_cond / logits_uncond: (B, C, K) float or None (guidance 1: uncond None; guidance 0: cond None).
    """

    def __init__(self, logits_cond: Tensor | None, logits_uncond: Tensor | None, guidance: float) -> None:
        self.mixed = logits_cond is not None and logits_uncond is not None
        self.first = logits_cond if logits_cond is not None else logits_uncond  # (B, C, K)
        self.second = logits_uncond if self.mixed else None  # (B, C, K) or None
        self.g = guidance
        self.log_z: list[Tensor] = []  # (B * C,) per softmax (first, second), set by draw()
        self.mix_sum: Tensor | None = None  # (B * C,) sums of the clamped guided mix (None: unguided)
        self.readers: list[_ClassReader] | None = None  # built by the first prob_at

    @_one_thread
    def draw(self, top_p: float, u: Tensor) -> Tensor:
        """x1_hat ~ top-p of p(x1 | z_t) at every position (same as top_p_sample on the materialised probs,
        the same uniforms u (B, C) giving the same draw up to float rounding). Returns (B, C) int64."""
        batch, size, k = self.first.shape
        n, device = batch * size, self.first.device
        logits = [x.reshape(n, k) for x in (self.first, self.second) if x is not None]
        u = u.reshape(n)
        out = torch.empty(n, dtype=torch.int64, device=device)
        chunk = max(1, _CHUNK_ELEMENTS // k)
        scratch = [torch.empty(min(chunk, n), k, device=device) for _ in logits]
        self.log_z = [torch.empty(n, device=device) for _ in logits]
        self.mix_sum = torch.empty(n, device=device) if self.mixed else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            parts = []
            for x, buf, log_z in zip(logits, scratch, self.log_z):
                x = x[s:e].float()
                high = x.amax(-1)
                # logits more than _LOGIT_FLOOR below their row's largest are raised to it before the softmax
                # (module docstring); NaN anywhere in a row (NaN or +inf logits, all -inf) gives a NaN row
                floored = torch.maximum(x, (high - _LOGIT_FLOOR)[:, None], out=buf[: e - s])
                q = _softmax_into(floored, floored)
                top = q.amax(-1)
                _check_finite_probs(top)
                log_z[s:e] = high - top.log()  # log Z = max logit - log(max p): reductions without indices
                parts.append(q)
            q, total = parts[0], None
            if self.mixed:
                torch.lerp(parts[1], q, self.g, out=q).clamp_(min=0)  # p_u + g (p_c - p_u), clamped
                total = q.sum(-1)
                self.mix_sum[s:e] = total
                top = q.amax(-1)
            if top_p >= 1.0:
                out[s:e] = _inverse_cdf(q, u[s:e])
                continue
            # the first maximal class (the stable sort's first): class 0 (the most common count) checked first
            arg = torch.where(q[:, 0] == top, 0, -1)
            other = (arg < 0).nonzero().squeeze(1)
            if other.numel():
                arg[other] = q.index_select(0, other).argmax(-1)
            out[s:e] = arg
            single = top >= top_p if total is None else top >= top_p * total  # the nucleus is the top class
            if bool(single.all()):
                continue
            rest = (~single).nonzero().squeeze(1)
            if rest.numel() == e - s:  # every row: no copies
                p, u_rest, top, arg = q, u[s:e], top, arg
            else:
                p, u_rest, top, arg = (x.index_select(0, rest) for x in (q, u[s:e], top, arg))
            if total is not None:
                tot = total.index_select(0, rest)
                p.div_(tot[:, None])
                top = top / tot
            out[s + rest] = _nucleus_of_two_or_more(p, u_rest, top, arg, top_p)
        return out.view(batch, size)

    def prob_at(self, k: Tensor) -> Tensor:
        """p(x1 = k) for integer k: (B, C) int64. Returns (B, C) float32."""
        batch, size, classes = self.first.shape
        if self.readers is None:
            self.readers = [_ClassReader(x) for x in (self.first, self.second) if x is not None]

        def softmax_at(reader: _ClassReader, log_z: Tensor) -> Tensor:
            return reader.at(k).float().sub_(log_z.view(batch, size)).exp_()  # (outside 0..K-1: masked below)

        p = softmax_at(self.readers[0], self.log_z[0])
        if self.mixed:
            p = torch.lerp(softmax_at(self.readers[1], self.log_z[1]), p, self.g).clamp_(min=0)
            p.div_(self.mix_sum.view(batch, size))
        return p.masked_fill_((k < 0) | (k >= classes), 0.0)


# ============================================================================================ schedule


def sigma_scale(schedule: SigmaSchedule, progress: float | Tensor, steepness: float = 100.0,
                midpoint: float = 0.8) -> float | Tensor:
    """f in "sigma = |x0_hat - x1_hat| / 4 * f" (paper section 3, sampling), at progress s in [0, 1].

    The sampler's step i (0-based, of N) draws z at t' = (i + 1) / N and uses s = t'. SIGMOID:
    sigmoid(-steepness * (s - midpoint)), ~1 early, ~0 over the last steps (the official sampler's default
    "sigmoid100_0.8": steepness 100, midpoint 0.8); LINEAR: 1 - s; CONSTANT: 1. progress: a float, or a tensor
    (then a tensor of the same shape is returned).
    """
    if not isinstance(schedule, SigmaSchedule):
        raise TypeError(f"sigma_schedule must be a SigmaSchedule, got {schedule!r}")
    if isinstance(progress, Tensor):
        if schedule is SigmaSchedule.SIGMOID:
            return torch.sigmoid(-steepness * (progress - midpoint))
        if schedule is SigmaSchedule.LINEAR:
            return 1.0 - progress
        return torch.ones_like(progress)
    if schedule is SigmaSchedule.SIGMOID:
        x = -steepness * (progress - midpoint)
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    if schedule is SigmaSchedule.LINEAR:
        return 1.0 - progress
    return 1.0


# ============================================================================================ the process


class FSDD:
    """Fixed-Sum Discrete Diffusion over count vectors (paper section 3): forward kernel, loss, sampler.

    codebook_size: C; total: M; noise: the prior x0 (NoiseKind). num_classes: when given, labels must lie in
    [0, num_classes) or equal null_label. null_label: the label of the unconditional ("null") class used by
    classifier-free guidance; default num_classes (CountDiT's convention: the extra, last row of its label table).
    Guidance other than 1 needs a null label. sigmoid_steepness, sigmoid_midpoint: the SIGMOID sigma schedule.
    train_sigma_schedule: f of the training kernel, sigma = |x1 - x0| / 4 * f(t) + 1e-6. CONSTANT (default) is the
    paper's and official code's kernel, whose sigma does not depend on t, although the sampler's does (its last
    steps are nearly noise-free); SIGMOID / LINEAR train on the sampler's own f(t) (an option, not the paper).
    """

    def __init__(self, codebook_size: int, total: int, noise: NoiseKind = NoiseKind.BINARY,
                 num_classes: int | None = None, null_label: int | None = None,
                 sigmoid_steepness: float = 100.0, sigmoid_midpoint: float = 0.8,
                 train_sigma_schedule: SigmaSchedule = SigmaSchedule.CONSTANT) -> None:
        self.codebook_size = _check_int(codebook_size, "codebook_size", 1)
        self.total = _check_int(total, "total", 1)
        if not isinstance(noise, NoiseKind):
            raise TypeError(f"noise must be a NoiseKind, got {noise!r}")
        self.noise = noise
        self.num_classes = None if num_classes is None else _check_int(num_classes, "num_classes", 1)
        if null_label is None and num_classes is not None:
            null_label = num_classes
        self.null_label = None if null_label is None else _check_int(null_label, "null_label", 0)
        if not (isinstance(sigmoid_steepness, (int, float)) and sigmoid_steepness > 0):
            raise ValueError(f"sigmoid_steepness must be a positive number, got {sigmoid_steepness!r}")
        if not (isinstance(sigmoid_midpoint, (int, float)) and math.isfinite(sigmoid_midpoint)):
            raise ValueError(f"sigmoid_midpoint must be a finite number, got {sigmoid_midpoint!r}")
        self.sigmoid_steepness = float(sigmoid_steepness)
        self.sigmoid_midpoint = float(sigmoid_midpoint)
        if not isinstance(train_sigma_schedule, SigmaSchedule):
            raise TypeError(f"train_sigma_schedule must be a SigmaSchedule, got {train_sigma_schedule!r}")
        self.train_sigma_schedule = train_sigma_schedule

    @classmethod
    def from_config(cls, cfg: FSDDConfig, codebook_size: int, total: int, num_classes: int | None = None,
                    null_label: int | None = None) -> FSDD:
        """FSDD with the prior and schedule of ``cfg`` (steps, top_p, guidance, schedule go to ``sample``)."""
        return cls(codebook_size, total, noise=cfg.noise, num_classes=num_classes, null_label=null_label,
                   sigmoid_steepness=cfg.sigmoid_steepness, sigmoid_midpoint=cfg.sigmoid_midpoint,
                   train_sigma_schedule=cfg.train_sigma_schedule)

    # ---------------------------------------------------------------------------------------- checks

    def _check_labels(self, labels: object, batch: int | None) -> Tensor:
        labels = _check_tensor(labels, "labels", 1)
        _check_integer_dtype(labels, "labels")
        if batch is not None and labels.shape[0] != batch:
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.shape[0] < 1:
            raise ValueError("labels must hold at least one label")
        labels = labels.long()
        if int(labels.min()) < 0:
            raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
        if self.num_classes is not None:
            bad = (labels >= self.num_classes) & (labels != (self.null_label if self.null_label is not None else -1))
            if bool(bad.any()):
                raise ValueError(f"labels must lie in [0, {self.num_classes}) or be the null label "
                                 f"{self.null_label}; got {int(labels[bad][0])}")
        return labels

    def _logits(self, model: Model, z: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        logits = model(z, t, labels)
        expected = (z.shape[0], self.codebook_size, self.total + 1)
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"model must return a float tensor of logits {expected}, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        if tuple(logits.shape) != expected:
            raise ValueError(f"model must return logits of shape {expected} (B, C, M + 1), got "
                             f"{tuple(logits.shape)}")
        return logits

    # ---------------------------------------------------------------------------------------- forward process

    def q_sample(self, x1: Tensor, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample z_t ~ q(z_t | x0, x1) (paper section 3, forward process), on the fixed-sum simplex.

        mean = t x1 + (1 - t) x0, sigma = |x1 - x0| / 4 * f(t) + 1e-6 per position (f = 1 unless
        train_sigma_schedule says otherwise, see the class docstring); draw from the discretised Gaussian
        over 0..M (sample_discretised_gaussian); greedy adjustment with the same probabilities restores the sum
        (random ties). x1, x0: (B, C) int64, rows sum to M; t: (B,) float in [0, 1].
        Returns z_t: (B, C) int64, rows sum to M.
        """
        x1 = _check_counts(x1, self.total, self.codebook_size, "x1")
        x0 = _check_counts(x0, self.total, self.codebook_size, "x0")
        t = _check_tensor(t, "t", 1)
        _check_float_dtype(t, "t")
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise ValueError(f"t must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]")
        if t.shape[0] != x1.shape[0] or x0.shape[0] != x1.shape[0]:
            raise ValueError(f"x1, x0 and t must share the batch size; got {x1.shape[0]}, {x0.shape[0]}, "
                             f"{t.shape[0]}")
        tt = t.float()[:, None]
        x1f, x0f = x1.float(), x0.float()
        mean = tt * x1f + (1.0 - tt) * x0f
        f = sigma_scale(self.train_sigma_schedule, tt, self.sigmoid_steepness, self.sigmoid_midpoint)
        sigma = (x1f - x0f).abs_().mul_(0.25 * f).add_(SIGMA_EPS)
        return self._kernel_step(mean, sigma, generator)

    @_one_thread
    def _kernel_step(self, mean: Tensor, sigma: Tensor, generator: torch.Generator | None) -> Tensor:
        """Discretise, sample, greedy-adjust: mean, sigma (B, C) float32 -> z (B, C) int64 summing to M."""
        kernel = _GaussianKernel(mean, sigma, self.total)
        u = torch.rand(mean.shape, generator=generator, device=mean.device)
        z = kernel.evaluate(u)
        return _greedy_rounds(z, _gains_of(kernel.prob_at), self.total, True, generator)

    def training_loss(self, model: Model, counts: Tensor, labels: Tensor,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The FSDD training objective (paper section 3): cross-entropy of p(x1 | z_t) to the data counts.

        t ~ U(0, 1) per row, x0 = fixed_sum_noise (self.noise), z_t = q_sample(x1, x0, t); logits =
        model(z_t, t, labels): (B, C, M + 1); cross-entropy against x1 at all C positions.
        counts: (B, C) int64, rows sum to M; labels: (B,) int64. Returns {"loss": scalar mean,
        "loss_per_sample": (B,) mean over positions (for binning by t), "t": (B,), "z_t": (B, C) int64}.
        """
        x1 = _check_counts(counts, self.total, self.codebook_size)
        labels = self._check_labels(labels, x1.shape[0])
        batch, device = x1.shape[0], x1.device
        t = torch.rand(batch, generator=generator, device=device)
        x0 = fixed_sum_noise(batch, self.codebook_size, self.total, generator, self.noise, device)
        z_t = self.q_sample(x1, x0, t, generator)
        logits = self._logits(model, z_t, t, labels)
        per_position = F.cross_entropy(logits.float().reshape(-1, self.total + 1), x1.reshape(-1),
                                       reduction="none").view(batch, self.codebook_size)
        per_sample = per_position.mean(1)
        return {"loss": per_sample.mean(), "loss_per_sample": per_sample, "t": t, "z_t": z_t}

    # ---------------------------------------------------------------------------------------- sampler

    def _posterior(self, model: Model, z: Tensor, t: Tensor, labels: Tensor, guidance: float) -> _ModelPosterior:
        """Call the model (once; on 2B rows [labels; null label] when guiding) -> p(x1 | z_t)."""
        if guidance == 1.0:
            return _ModelPosterior(self._logits(model, z, t, labels), None, 1.0)
        null = torch.full_like(labels, self.null_label)
        if guidance == 0.0:
            return _ModelPosterior(None, self._logits(model, z, t, null), 0.0)
        both = self._logits(model, torch.cat([z, z]), torch.cat([t, t]), torch.cat([labels, null]))
        return _ModelPosterior(both[: z.shape[0]], both[z.shape[0]:], guidance)

    @torch.no_grad()
    def sample(self, model: Model, labels: Tensor, steps: int = 25, top_p: float = 0.8, guidance: float = 1.0,
               sigma_schedule: SigmaSchedule = SigmaSchedule.SIGMOID, generator: torch.Generator | None = None,
               return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Generate count vectors (paper section 3, sampling), class-conditionally.

        z_0 = fixed_sum_noise; for step i = 0..steps-1 with t = i/steps, t' = (i+1)/steps:
          p(x1 | z_t) from the model (guidance g != 1: p = p_u + g (p_c - p_u), clamped >= 0 and renormalised,
          p_u from the null label; one batched model call on 2B rows);
          x1_hat ~ top-p of p, then greedy_adjust with p (random ties) so it sums exactly to M;
          x0_hat = (z_t - t x1_hat) / (1 - t); mean = t' x1_hat + (1 - t') x0_hat;
          sigma = |x0_hat - x1_hat| / 4 * f(t') + 1e-6 (f: sigma_schedule, see sigma_scale);
          z_t' ~ discretised Gaussian(mean, sigma), greedy-adjusted to sum M.
        Returns the final state z_1 (at t' = 1 the mean is x1_hat, and with the SIGMOID or LINEAR schedule sigma is
        ~1e-6 there, so z_1 equals the last x1_hat; with CONSTANT it is a last noisy draw around it).
        model: callable model(z, t, labels) -> logits (B, C, M + 1), in eval mode; labels: (B,) int64;
        return_trajectory: also return states = [z_0, x1_hat_0, z_1/N, x1_hat_1, ..., x1_hat_{N-1}, z_1]
        (2 * steps + 1 tensors, each (B, C) int64 summing to M). Returns counts: (B, C) int64, rows sum to M.
        """
        labels = self._check_labels(labels, None)
        steps = _check_int(steps, "steps", 1)
        top_p = _check_top_p(top_p)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
                or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        guidance = float(guidance)
        if guidance != 1.0 and self.null_label is None:
            raise ValueError("guidance != 1 needs the null label: construct FSDD with num_classes or null_label")
        if not isinstance(sigma_schedule, SigmaSchedule):
            raise TypeError(f"sigma_schedule must be a SigmaSchedule, got {sigma_schedule!r}")
        batch, device = labels.shape[0], labels.device
        z = fixed_sum_noise(batch, self.codebook_size, self.total, generator, self.noise, device)
        states = [z] if return_trajectory else None
        for i in range(steps):
            t, t_next = i / steps, (i + 1) / steps
            posterior = self._posterior(model, z, torch.full((batch,), t, device=device), labels, guidance)
            f = sigma_scale(sigma_schedule, t_next, self.sigmoid_steepness, self.sigmoid_midpoint)
            x1_hat, z = self._step(posterior, z, t, t_next, top_p, f, generator)
            if states is not None:
                states += [x1_hat, z]
        return (z, states) if states is not None else z

    @_one_thread
    def _step(self, posterior: _ModelPosterior, z: Tensor, t: float, t_next: float, top_p: float, f: float,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The sampler's own work in one step, after the model call (see sample): z_t (B, C) int64 and
        p(x1 | z_t) -> (x1_hat, z_t'), both (B, C) int64 summing to M (checked). f: the sigma schedule at t'."""
        total = self.total
        u = torch.rand(z.shape, generator=generator, device=z.device)
        x1_hat = _greedy_rounds(posterior.draw(top_p, u), _gains_of(posterior.prob_at), total, True, generator)
        _check_on_simplex(x1_hat, total, f"x1_hat at t = {t:.4g}")
        x1f = x1_hat.float()
        x0_hat = (z.float() - t * x1f) / (1.0 - t)
        mean = t_next * x1f + (1.0 - t_next) * x0_hat
        sigma = (x0_hat - x1f).abs_().mul_(0.25 * f).add_(SIGMA_EPS)
        z = self._kernel_step(mean, sigma, generator)
        _check_on_simplex(z, total, f"z_t at t = {t_next:.4g}")
        return x1_hat, z
