"""Greedy adjustment: back onto the fixed sum by +-1 moves at the largest probability gains (the fsdd package
docstring has the semantics: rounds, ties)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from tokenset.fsdd.checks import (_check_entries, _check_float_dtype, _check_int, _check_mean_sigma, _check_tensor,
                                   _one_thread)
from tokenset.fsdd.kernel import _GaussianKernel


def _ordered_key(gain: Tensor) -> Tensor:
    """float32 -> int64 with the same order (IEEE bit trick: negative floats have their magnitude bits flipped)."""
    bits = (gain.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()


def _top_r(gain: Tensor, immovable: Tensor, r: Tensor, tiebreak: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """Per row, the r movable positions with the largest gains, equal gains ordered by larger tiebreak.

    gain: (R, C) float, a scratch this function overwrites; immovable: (R, C) bool; r: (R,) int64 with
    0 <= r <= number of movable positions (rows with r = 0 choose nothing, whatever their immovable);
    tiebreak() -> (R, C) int64 in [0, 2^31), called only when needed.
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
