"""The model's posterior p(x1 | z_t) in the sampler: classifier-free guidance, exact top-p, p(k) read back."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenset.fsdd.checks import _check_float_dtype, _check_tensor, _one_thread
from tokenset.fsdd.kernel import _CHUNK_ELEMENTS, _inverse_cdf

_LOGIT_FLOOR = 80.0  # logits further below their row's largest are raised to (largest - this) before softmax
_NUCLEUS_FIRST = 8  # classes looked at (topk) before sorting a position's whole distribution for top-p


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
