"""Tests of tokenset/fsdd/: Fixed-Sum Discrete Diffusion (paper section 3).

Property tests (hypothesis) for every public function, the sampler's invariant at EVERY state it produces,
greedy adjustment against an exhaustive reference, the fast paths against the materialised definitions, a tiny
overfit run, and every rejected input. Statistical checks use 5-sigma bounds (false alarm rate < 1e-6 per check).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tokenset.fsdd import kernel as fsdd_kernel
from tokenset.fsdd import posterior as fsdd_posterior
from tokenset.config import FSDDConfig, NoiseKind, SigmaSchedule
from tokenset.fsdd import (
    FSDD,
    classifier_free_guidance,
    discretised_gaussian,
    fixed_sum_noise,
    greedy_adjust,
    greedy_adjust_gaussian,
    round_fixed_sum,
    sample_discretised_gaussian,
    sigma_scale,
    top_p_sample,
)

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_on_simplex(x: torch.Tensor, total: int, shape: tuple[int, int]) -> None:
    assert x.dtype == torch.int64
    assert tuple(x.shape) == shape
    assert int(x.min()) >= 0 and int(x.max()) <= total
    assert torch.equal(x.sum(1), torch.full((shape[0],), total))


class TinyDenoiser(nn.Module):
    """An untrained stand-in for CountDiT: count + position + label + time embeddings, one hidden layer."""

    def __init__(self, codebook_size: int, total: int, num_classes: int, width: int = 16, seed: int = 0,
                 scale: float = 1.0):
        super().__init__()
        self.count = nn.Embedding(total + 1, width)
        self.position = nn.Parameter(torch.zeros(codebook_size, width))
        self.label = nn.Embedding(num_classes + 1, width)  # row num_classes: the null class
        self.time = nn.Linear(1, width)
        self.out = nn.Linear(width, total + 1)
        g = gen(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.count(z) + self.position + self.label(labels)[:, None] + self.time(t[:, None])[:, None]
        return self.out(torch.tanh(h))


class RandomLogits:
    """A callable returning fresh random logits (peaked at random classes) and recording its inputs."""

    def __init__(self, total: int, seed: int = 0, peak: float = 0.0):
        self.total, self.g, self.peak, self.calls = total, gen(seed), peak, []

    def __call__(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls.append((z.clone(), t.clone(), labels.clone()))
        logits = torch.randn(*z.shape, self.total + 1, generator=self.g) * 2.0
        if self.peak:
            logits[..., 0] += self.peak
        return logits


# ============================================================================================ prior


@PROPERTY
@given(batch=st.integers(1, 4), size=st.integers(1, 40), total=st.integers(0, 100), seed=seeds,
       kind=st.sampled_from(list(NoiseKind)))
def test_fixed_sum_noise_is_on_the_simplex(batch, size, total, seed, kind):
    x = fixed_sum_noise(batch, size, total, gen(seed), kind)
    assert_on_simplex(x, total, (batch, size))
    if kind is NoiseKind.BINARY:  # 0/1 with exactly `total` ones; beyond C: floor(M/C) or one more
        base = total // size
        assert set(x.unique().tolist()) <= {base, base + 1}
    assert torch.equal(x, fixed_sum_noise(batch, size, total, gen(seed), kind))  # explicit generator


@pytest.mark.parametrize("kind", list(NoiseKind))
def test_fixed_sum_noise_is_uniform_over_positions(kind):
    # every position holds M / C of the mass in expectation; 5-sigma bound on 20000 rows
    rows, size, total = 20000, 8, 3
    x = fixed_sum_noise(rows, size, total, gen(1), kind).double()
    mean = x.mean(0)
    std = x.std(0) / math.sqrt(rows)
    assert bool(((mean - total / size).abs() < 5 * std + 1e-9).all()), mean


@PROPERTY
@given(batch=st.integers(1, 4), size=st.integers(1, 30), total=st.integers(0, 60), seed=seeds)
def test_round_fixed_sum_is_largest_remainder(batch, size, total, seed):
    x = torch.rand(batch, size, generator=gen(seed), dtype=torch.float64) * 5 + 1e-3
    out = round_fixed_sum(x, total)
    assert_on_simplex(out, total, (batch, size))
    y = x * (total / x.sum(1, keepdim=True))
    assert bool(((out - y).abs() < 1 + 1e-9).all())
    frac = y - y.floor()
    up = out > y.floor().long()
    for b in range(batch):  # every entry rounded up has a fraction >= every entry rounded down
        if up[b].any() and (~up[b]).any():
            assert float(frac[b][up[b]].min()) >= float(frac[b][~up[b]].max()) - 1e-9


def test_round_fixed_sum_keeps_rows_already_on_the_simplex():
    counts = fixed_sum_noise(5, 12, 30, gen(0), NoiseKind.MULTINOMIAL)
    assert torch.equal(round_fixed_sum(counts.float(), 30), counts)


# ============================================================================================ discretised Gaussian


@PROPERTY
@given(total=st.integers(0, 40), seed=seeds)
def test_discretised_gaussian_is_a_distribution_even_for_zero_sigma(total, seed):
    g = gen(seed)
    mean = torch.rand(3, 20, generator=g, dtype=torch.float64) * (total + 20) - 10  # also outside [0, M]
    sigma = torch.rand(3, 20, generator=g, dtype=torch.float64) * 4
    sigma[:, :8] = torch.tensor([0.0, 1e-30, 1e-6, 1e-3, 0.0, 0.0, 1e-6, 0.0], dtype=torch.float64)
    p = discretised_gaussian(mean, sigma, total)
    assert p.shape == (3, 20, total + 1)
    assert bool(torch.isfinite(p).all()) and float(p.min()) >= 0
    assert torch.allclose(p.sum(-1), torch.ones(3, 20, dtype=torch.float64))
    # sigma -> 0: a point mass at the nearest support point (unless the mean sits on a half-integer)
    nearest = mean.round().clamp(0, total).long()
    tiny = (sigma <= 1e-6) & ((mean - mean.floor() - 0.5).abs() > 1e-3)
    assert bool((p.gather(-1, nearest[..., None]).squeeze(-1)[tiny] == 1.0).all())


def test_discretised_gaussian_matches_the_pdf_formula():
    mean = torch.tensor([[3.3, -2.0, 12.7, 6.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.7, 1.5, 2.0, 9.0]], dtype=torch.float64)
    k = torch.arange(11, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((k - mean[..., None]) / sigma[..., None]) ** 2) / sigma[..., None]  # 1/sqrt(2pi) cancels
    assert torch.allclose(discretised_gaussian(mean, sigma, 10), pdf / pdf.sum(-1, keepdim=True), atol=1e-12)
    # an exact half-integer mean with sigma 0: half and half
    half = discretised_gaussian(torch.tensor([[2.5]]), torch.tensor([[0.0]]), 5)[0, 0]
    assert torch.allclose(half, torch.tensor([0, 0, 0.5, 0.5, 0, 0]))


@PROPERTY
@given(total=st.integers(1, 60), seed=seeds)
def test_window_probabilities_equal_the_materialised_kernel(total, seed):
    # the closed-form p(k) of the windowed kernel (all tiers, point masses) vs discretised_gaussian, all k
    g = gen(seed)
    mean = torch.rand(2, 30, generator=g, dtype=torch.float64) * (total + 6) - 3
    sigma = torch.rand(2, 30, generator=g, dtype=torch.float64) ** 3 * 8
    sigma[:, :5] = 1e-6
    kernel = fsdd_kernel._GaussianKernel(mean, sigma, total)
    kernel.evaluate()
    dense = discretised_gaussian(mean, sigma, total)
    for k in range(-1, total + 2):
        at = kernel.prob_at(torch.full((2, 30), k))
        expected = dense[..., k] if 0 <= k <= total else torch.zeros(2, 30, dtype=torch.float64)
        assert torch.allclose(at, expected, atol=1e-9), k


@pytest.mark.parametrize("mean,sigma,total", [
    (3.3, 0.7, 10),  # small window tier
    (-1.2, 0.3, 6),  # mean below the support
    (20.4, 3.0, 24),  # wider tier, mass piled at the top of the support
    (40.0, 30.0, 64),  # sigma so large the window is the whole support
    (2.5, 1e-6, 5),  # a near point mass at a tie: half and half
])
def test_sample_discretised_gaussian_has_the_kernel_distribution(mean, sigma, total):
    n = 20000
    z = sample_discretised_gaussian(torch.full((1, n), mean), torch.full((1, n), sigma), total, gen(3))
    assert z.dtype == torch.int64 and int(z.min()) >= 0 and int(z.max()) <= total
    freq = torch.bincount(z[0], minlength=total + 1).double() / n
    p = discretised_gaussian(torch.tensor([[mean]], dtype=torch.float64),
                             torch.tensor([[sigma]], dtype=torch.float64), total)[0, 0]
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 2e-4
    assert bool(((freq - p).abs() <= bound).all()), (freq - p).abs().max()


def test_sample_discretised_gaussian_is_exact_for_zero_sigma():
    mean = torch.tensor([[0.2, 3.7, -4.0, 99.0, 5.49]])
    z = sample_discretised_gaussian(mean, torch.zeros_like(mean), 6, gen(0))
    assert z.tolist() == [[0, 4, 0, 6, 5]]


# ============================================================================================ greedy adjustment


def brute_force_greedy(z: torch.Tensor, probs: torch.Tensor, total: int) -> torch.Tensor:
    """The reference: rounds; in each, among ALL sets of r = min(|d|, #movable) distinct movable positions, the
    one with the largest summed gain (exact rational sums of the gains as computed in probs' dtype; on equal sums
    the lexicographically first set, i.e. lowest indices), each moved one unit; repeat until the sum is total."""
    out = z.clone()
    for b in range(z.shape[0]):
        row = out[b].tolist()
        while sum(row) != total:
            step = 1 if sum(row) < total else -1
            movable = [j for j, v in enumerate(row) if 0 <= v + step <= total]
            gains = {j: Fraction(float(probs[b, j, row[j] + step] - probs[b, j, row[j]])) for j in movable}
            r = min(abs(total - sum(row)), len(movable))
            best, best_gain = None, None
            for subset in itertools.combinations(movable, r):  # lexicographic order
                s = sum(gains[j] for j in subset)
                if best_gain is None or s > best_gain:
                    best, best_gain = subset, s
            for j in best:
                row[j] += step
        out[b] = torch.tensor(row)
    return out


@PROPERTY
@given(batch=st.integers(1, 3), size=st.integers(1, 5), total=st.integers(1, 6), seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float64]), ties=st.booleans())
def test_greedy_adjust_equals_the_exhaustive_reference(batch, size, total, seed, dtype, ties):
    g = gen(seed)
    z = torch.randint(0, total + 1, (batch, size), generator=g)  # any sum: deficits and excesses beyond C
    probs = torch.rand(batch, size, total + 1, generator=g, dtype=dtype)
    if ties:  # few distinct values: equal gains everywhere, resolved by the lowest index
        probs = (probs * 3).floor() + 1
    probs = probs / probs.sum(-1, keepdim=True)
    out = greedy_adjust(z, probs, total)
    assert_on_simplex(out, total, (batch, size))
    assert torch.equal(out, brute_force_greedy(z, probs, total))


@PROPERTY
@given(batch=st.integers(1, 6), size=st.integers(1, 50), total=st.integers(1, 80), seed=seeds,
       random_ties=st.booleans())
def test_greedy_adjust_properties(batch, size, total, seed, random_ties):
    g = gen(seed)
    z = torch.randint(0, total + 1, (batch, size), generator=g)
    z[0] = fixed_sum_noise(1, size, total, g)[0]  # a row already at the total
    probs = torch.softmax(torch.randn(batch, size, total + 1, generator=g) * 3, -1)
    out = greedy_adjust(z, probs, total, random_ties=random_ties, generator=g)
    assert_on_simplex(out, total, (batch, size))
    assert torch.equal(out[0], z[0])  # untouched
    deficit = (z.sum(1) < total)[:, None]
    assert bool(torch.where(deficit, out >= z, out <= z).all())  # moves only towards the total
    # rounds move distinct positions: no position moves more than the number of rounds needed
    rounds = torch.ceil((z.sum(1) - total).abs() / size).clamp(min=1)
    assert bool(torch.where(z.sum(1, keepdim=True) < total, (out - z).abs() <= rounds[:, None], True).all())


def test_greedy_adjust_large_deficit_and_excess_beyond_codebook_size():
    total = 50
    z = torch.tensor([[0, 0, 0], [50, 50, 50], [50, 0, 49]])  # deficit 50 > C, excess 100, excess 49
    probs = torch.softmax(torch.randn(3, 3, total + 1, generator=gen(0)), -1)
    for random_ties in (False, True):
        out = greedy_adjust(z, probs, total, random_ties=random_ties, generator=gen(1))
        assert_on_simplex(out, total, (3, 3))


def test_greedy_adjust_single_round_takes_the_largest_gains():
    # the paper's rule: |d| <= C distinct positions, the largest p(z+1) - p(z)
    z = torch.tensor([[0, 0, 0, 0, 0]])
    probs = torch.zeros(1, 5, 3)
    probs[0, :, 0] = torch.tensor([0.5, 0.9, 0.2, 0.6, 0.1])
    probs[0, :, 1] = 1 - probs[0, :, 0]  # gains 0, -0.8, 0.6, -0.2, 0.8
    assert greedy_adjust(z, probs, 2).tolist() == [[0, 0, 1, 0, 1]]


def test_greedy_adjust_random_ties_are_unbiased():
    # all gains equal: each of 10 positions gets the single unit with probability 1/10 (5-sigma, 5000 rows)
    rows, size = 5000, 10
    z = torch.zeros(rows, size, dtype=torch.int64)
    probs = torch.full((rows, size, 2), 0.5)
    out = greedy_adjust(z, probs, 1, random_ties=True, generator=gen(0))
    freq = out.sum(0).double() / rows
    assert bool(((freq - 0.1).abs() < 5 * math.sqrt(0.09 / rows)).all()), freq
    assert greedy_adjust(z[:1], probs[:1], 1).tolist() == [[1] + [0] * 9]  # deterministic: lowest index


@PROPERTY
@given(total=st.integers(1, 40), size=st.integers(1, 40), seed=seeds)
def test_greedy_adjust_gaussian_equals_the_materialised_version(total, size, seed):
    g = gen(seed)
    mean = torch.rand(3, size, generator=g, dtype=torch.float64) * (total + 4) - 2
    sigma = torch.rand(3, size, generator=g, dtype=torch.float64) * 3
    sigma[:, ::3] = 1e-6
    z = sample_discretised_gaussian(mean, sigma, total, g)
    out = greedy_adjust_gaussian(z, mean, sigma, total)
    assert_on_simplex(out, total, (3, size))
    assert torch.equal(out, greedy_adjust(z, discretised_gaussian(mean, sigma, total), total))


# ============================================================================================ model posterior


def test_classifier_free_guidance_on_probabilities():
    g = gen(0)
    lc, lu = torch.randn(2, 5, 7, generator=g) * 3, torch.randn(2, 5, 7, generator=g) * 3
    assert torch.allclose(classifier_free_guidance(lc, lu, 1.0), torch.softmax(lc, -1), atol=1e-6)
    assert torch.allclose(classifier_free_guidance(lc, lu, 0.0), torch.softmax(lu, -1), atol=1e-6)
    p = classifier_free_guidance(lc, lu, 4.0)
    pc, pu = torch.softmax(lc, -1), torch.softmax(lu, -1)
    mix = (pu + 4.0 * (pc - pu)).clamp(min=0)
    assert float(p.min()) >= 0 and torch.allclose(p.sum(-1), torch.ones(2, 5))
    assert torch.allclose(p, mix / mix.sum(-1, keepdim=True), atol=1e-6)
    assert bool((p[mix == 0] == 0).all()) and bool((mix == 0).any())  # the clamp did something


@PROPERTY
@given(seed=seeds, top_p=st.floats(0.05, 1.0))
def test_top_p_sample_draws_inside_the_nucleus(seed, top_p):
    g = gen(seed)
    probs = torch.softmax(torch.randn(3, 16, 9, generator=g) * 2, -1)
    x = top_p_sample(probs, top_p, g)
    assert x.dtype == torch.int64 and x.shape == (3, 16)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    rank = (order == x[..., None]).long().argmax(-1)  # rank of the drawn class
    mass_before = (sorted_p.cumsum(-1) - sorted_p).gather(-1, rank[..., None]).squeeze(-1)
    assert bool((mass_before < top_p).all())  # every drawn class is in the smallest prefix reaching top_p


def test_top_p_sample_tiny_top_p_is_argmax_and_one_is_the_full_distribution():
    probs = torch.softmax(torch.randn(2, 30, 5, generator=gen(0)) * 2, -1)
    assert torch.equal(top_p_sample(probs, 1e-6, gen(1)), probs.argmax(-1))
    n = 20000
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    x = top_p_sample(p.expand(1, n, 4).contiguous(), 1.0, gen(2))
    freq = torch.bincount(x[0], minlength=4).double() / n
    assert bool(((freq - p.double()).abs() < 5 * torch.sqrt(p.double() * (1 - p.double()) / n)).all())


@pytest.mark.parametrize("first", [2, 8])
def test_top_p_sample_renormalises_over_the_whole_nucleus(first, monkeypatch):
    # p = (0.1, 0.4, 0.2, 0.3), top_p 0.8: nucleus {1, 3, 2} (0.7 before class 2 < 0.8), drawn as p / 0.9
    monkeypatch.setattr(fsdd_posterior, "_NUCLEUS_FIRST", first)
    n = 20000
    p = torch.tensor([0.1, 0.4, 0.2, 0.3])
    expected = torch.tensor([0.0, 0.4, 0.2, 0.3], dtype=torch.float64) / 0.9
    for draw in (top_p_sample(p.expand(1, n, 4).contiguous(), 0.8, gen(4))[0],
                 fsdd_posterior._nucleus_draw(p.expand(n, 4), torch.rand(n, generator=gen(4)), 0.8)):
        freq = torch.bincount(draw, minlength=4).double() / n
        assert bool(((freq - expected).abs() <= 5 * torch.sqrt(expected * (1 - expected) / n)).all()), freq


@pytest.mark.parametrize("guidance", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("top_p", [0.3, 0.8, 1.0])
@pytest.mark.parametrize("first", [2, 8])  # classes looked at before a full sort: fallbacks taken or not
def test_fast_posterior_equals_the_materialised_reference(guidance, top_p, first, monkeypatch):
    # chunked softmax + argmax shortcut + topk, sorting only where needed == classifier_free_guidance + top_p_sample
    monkeypatch.setattr(fsdd_posterior, "_NUCLEUS_FIRST", first)
    monkeypatch.setattr(fsdd_posterior, "_CHUNK_ELEMENTS", 500 * 13)  # several chunks
    g = gen(7)
    batch, size, total = 3, 700, 12  # 2100 positions, several chunks with a small chunk size
    lc = torch.randn(batch, size, total + 1, generator=g) * 2
    lu = torch.randn(batch, size, total + 1, generator=g) * 2
    lc[:, ::2, 0] += 6.0  # half the positions peaked (single-class nucleus), half spread
    lu[:, ::3, 1] += 5.0
    cond, uncond = (None if guidance == 0.0 else lc), (None if guidance == 1.0 else lu)
    posterior = fsdd_posterior._ModelPosterior(cond, uncond, guidance)
    fast = posterior.draw(top_p, torch.rand(batch, size, generator=gen(11)))
    reference_probs = classifier_free_guidance(lc, lu, guidance)
    reference = top_p_sample(reference_probs, top_p, gen(11))  # the same uniforms
    assert (fast == reference).double().mean() > 0.999
    for k in (-1, 0, 5, total, total + 1):
        at = posterior.prob_at(torch.full((batch, size), k))
        expected = reference_probs[..., k] if 0 <= k <= total else torch.zeros(batch, size)
        assert torch.allclose(at, expected, atol=1e-6)


def test_fast_posterior_with_logits_far_below_the_top_and_pairs_of_classes():
    # logits 100 to 10^4 below a row's largest (raised to largest - 80 before the softmax: no denormals) change
    # neither the draw nor p(k); p = (0.5, 0.35, 0.15) at top_p 0.8: the nucleus is the first two classes (one
    # max after masking the first); equal top classes (0.4, 0.4, 0.2) at top_p 0.5: the pair, half and half
    n = 20000
    far = torch.tensor([-100.0, -1e3, -1e4])
    for p, top_p, expected in (((0.5, 0.35, 0.15), 0.8, (0.5 / 0.85, 0.35 / 0.85, 0.0)),
                               ((0.4, 0.4, 0.2), 0.5, (0.5, 0.5, 0.0))):
        logits = torch.cat([torch.tensor(p).log(), far]).expand(1, n, 6).contiguous()
        posterior = fsdd_posterior._ModelPosterior(logits, None, 1.0)
        u = torch.rand(1, n, generator=gen(5))
        draw = posterior.draw(top_p, u)
        reference = top_p_sample(torch.softmax(logits, -1), top_p, gen(5))  # the same uniforms
        assert (draw == reference).double().mean() > 0.999
        freq = torch.bincount(draw[0], minlength=6).double() / n
        want = torch.tensor([*expected, 0.0, 0.0, 0.0], dtype=torch.float64)
        assert bool(((freq - want).abs() <= 5 * torch.sqrt(want * (1 - want) / n) + 1e-12).all()), freq
        for k in range(6):
            at = posterior.prob_at(torch.full((1, n), k))
            assert torch.allclose(at, torch.softmax(logits, -1)[..., k], rtol=1e-5, atol=1e-30), k  # denormals


def test_own_work_runs_on_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    seen = []

    def model(z, t, labels):
        seen.append(torch.get_num_threads())  # the model keeps the caller's threads
        return torch.zeros(*z.shape, 6)

    try:
        torch.set_num_threads(2)
        FSDD(8, 5).sample(model, torch.tensor([0, 0]), steps=2, generator=gen(0))
        assert seen == [2, 2] and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="finite and non-negative"):
            greedy_adjust(torch.tensor([[1, 1]]), torch.full((1, 2, 4), math.nan), 3)
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(before)


def test_sigma_scale_schedules():
    sig = [sigma_scale(SigmaSchedule.SIGMOID, (i + 1) / 25) for i in range(25)]
    assert sig[0] > 0.999 and sig[-1] < 1e-6 and all(a >= b for a, b in zip(sig, sig[1:]))
    assert sigma_scale(SigmaSchedule.LINEAR, 1.0) == 0.0 and sigma_scale(SigmaSchedule.CONSTANT, 1.0) == 1.0
    t = torch.tensor([0.0, 0.8, 1.0])
    assert torch.allclose(sigma_scale(SigmaSchedule.SIGMOID, t), torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)
    with pytest.raises(TypeError, match="SigmaSchedule"):
        sigma_scale("sigmoid", 0.5)


# ============================================================================================ forward process, loss


@PROPERTY
@given(batch=st.integers(1, 4), size=st.integers(1, 30), total=st.integers(1, 40), seed=seeds,
       schedule=st.sampled_from(list(SigmaSchedule)))
def test_q_sample_is_on_the_simplex(batch, size, total, seed, schedule):
    g = gen(seed)
    fsdd = FSDD(size, total, train_sigma_schedule=schedule)
    x1 = fixed_sum_noise(batch, size, total, g, NoiseKind.MULTINOMIAL)
    x0 = fixed_sum_noise(batch, size, total, g)
    t = torch.rand(batch, generator=g)
    t[0] = 0.0
    z = fsdd.q_sample(x1, x0, t, g)
    assert_on_simplex(z, total, (batch, size))
    same = fsdd.q_sample(x1, x1, t, g)  # x0 = x1: sigma 1e-6, mean x1 at every t
    assert torch.equal(same, x1)


def test_training_loss_outputs():
    size, total = 12, 6
    fsdd = FSDD(size, total, num_classes=3)
    model = TinyDenoiser(size, total, 3)
    counts = fixed_sum_noise(4, size, total, gen(0), NoiseKind.MULTINOMIAL)
    labels = torch.tensor([0, 1, 2, 3])  # 3 = the null class
    out = fsdd.training_loss(model, counts, labels, gen(1))
    assert set(out) == {"loss", "loss_per_sample", "t", "z_t"}
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert torch.allclose(out["loss"], out["loss_per_sample"].mean())
    assert out["loss_per_sample"].shape == (4,) and out["t"].shape == (4,)
    assert bool(((out["t"] >= 0) & (out["t"] < 1)).all())
    assert_on_simplex(out["z_t"], total, (4, size))
    out["loss"].backward()
    assert model.out.weight.grad is not None
    again = fsdd.training_loss(model, counts, labels, gen(1))
    assert torch.equal(again["z_t"], out["z_t"]) and torch.allclose(again["loss"], out["loss"])


def test_training_loss_decreases_on_a_tiny_overfit_case():
    size, total = 8, 4
    fsdd = FSDD(size, total, num_classes=4)
    counts = fixed_sum_noise(4, size, total, gen(0), NoiseKind.MULTINOMIAL).repeat(4, 1)
    labels = torch.arange(4).repeat(4)
    model = TinyDenoiser(size, total, 4, width=32, scale=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = gen(1)
    losses = []
    for _ in range(100):
        loss = fsdd.training_loss(model, counts, labels, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


# ============================================================================================ sampler


@pytest.mark.parametrize("batch,size,total", [(1, 6, 10), (3, 40, 5), (2, 16, 16)])  # C < M, C > M, C = M
@pytest.mark.parametrize("guidance", [1.0, 0.0, 3.0])
@pytest.mark.parametrize("schedule", list(SigmaSchedule))
def test_sampler_invariant_at_every_state(batch, size, total, guidance, schedule):
    num_classes, steps = 3, 6
    fsdd = FSDD(size, total, num_classes=num_classes)
    labels = torch.arange(batch) % num_classes
    for model in (TinyDenoiser(size, total, num_classes, seed=batch), RandomLogits(total, seed=size)):
        for top_p in (0.8, 1.0):
            out, states = fsdd.sample(model, labels, steps=steps, top_p=top_p, guidance=guidance,
                                      sigma_schedule=schedule, generator=gen(0), return_trajectory=True)
            assert len(states) == 2 * steps + 1
            for state in states:  # z_0, x1_hat_0, z_1/N, ..., x1_hat_{N-1}, z_1: all on the simplex
                assert_on_simplex(state, total, (batch, size))
            assert torch.equal(out, states[-1])
            if schedule is not SigmaSchedule.CONSTANT:
                assert torch.equal(out, states[-2])  # f(1) ~ 0: the final state is the last x1_hat


def test_sampler_calls_the_model_as_documented():
    size, total, batch, steps = 10, 7, 2, 4
    model = RandomLogits(total, peak=3.0)
    fsdd = FSDD(size, total, num_classes=5)
    labels = torch.tensor([4, 1])
    fsdd.sample(model, labels, steps=steps, guidance=2.0, generator=gen(0))
    assert len(model.calls) == steps  # one batched call per step
    for i, (z, t, lab) in enumerate(model.calls):
        assert z.shape == (2 * batch, size) and z.dtype == torch.int64
        assert torch.equal(z[:batch], z[batch:])
        assert torch.allclose(t, torch.full((2 * batch,), i / steps))
        assert lab.tolist() == [4, 1, 5, 5]  # labels, then the null label = num_classes
    model.calls.clear()
    fsdd.sample(model, labels, steps=2, guidance=1.0, generator=gen(0))
    assert [c[2].tolist() for c in model.calls] == [[4, 1], [4, 1]]  # no guidance: conditional only


def test_sampler_recovers_a_confident_models_target():
    size, total = 20, 9
    target = fixed_sum_noise(2, size, total, gen(5), NoiseKind.MULTINOMIAL)

    def oracle(z, t, labels):  # certain of the target whatever z_t is
        return torch.nn.functional.one_hot(target[: z.shape[0]], total + 1).float() * 50.0

    fsdd = FSDD(size, total)
    for schedule in (SigmaSchedule.SIGMOID, SigmaSchedule.LINEAR):
        out = fsdd.sample(oracle, torch.tensor([0, 0]), steps=5, sigma_schedule=schedule, generator=gen(0))
        assert torch.equal(out, target)


def test_sampler_is_reproducible_and_batch_one_works():
    fsdd = FSDD(30, 12, num_classes=2)
    model = TinyDenoiser(30, 12, 2)
    a = fsdd.sample(model, torch.tensor([1]), steps=4, guidance=1.5, generator=gen(3))
    b = fsdd.sample(model, torch.tensor([1]), steps=4, guidance=1.5, generator=gen(3))
    assert torch.equal(a, b)
    assert_on_simplex(a, 12, (1, 30))


def test_from_config():
    cfg = FSDDConfig.preset("paper", noise=NoiseKind.MULTINOMIAL, sigmoid_midpoint=0.7)
    fsdd = FSDD.from_config(cfg, 64, 16, num_classes=10)
    assert (fsdd.noise, fsdd.sigmoid_midpoint, fsdd.null_label) == (NoiseKind.MULTINOMIAL, 0.7, 10)
    assert fsdd.train_sigma_schedule is SigmaSchedule.CONSTANT


# ============================================================================================ bad input


@pytest.fixture
def setup():
    return FSDD(8, 5, num_classes=3), TinyDenoiser(8, 5, 3), fixed_sum_noise(2, 8, 5, gen(0))


@pytest.mark.parametrize("counts,error,match", [
    (lambda c: c + torch.tensor([[1] + [0] * 7, [0] * 8]), ValueError, "sum to M = 5; row 0 sums to 6"),
    (lambda c: c - 2 * torch.nn.functional.one_hot(torch.tensor([0, 0]), 8) + torch.nn.functional.one_hot(
        torch.tensor([1, 1]), 8) * 2, ValueError, "non-negative"),
    (lambda c: c.float(), TypeError, "integer dtype"),
    (lambda c: c[:, :7], ValueError, "C = 8"),
    (lambda c: c[0], ValueError, "2 dimensions"),
    (lambda c: c.tolist(), TypeError, "torch.Tensor"),
])
def test_training_loss_rejects_bad_counts(setup, counts, error, match):
    fsdd, model, good = setup
    with pytest.raises(error, match=match):
        fsdd.training_loss(model, counts(good), torch.tensor([0, 1]))


@pytest.mark.parametrize("labels,error,match", [
    (torch.tensor([0, 4]), ValueError, r"\[0, 3\) or be the null label 3"),
    (torch.tensor([-1, 0]), ValueError, "non-negative"),
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
    (torch.tensor([[0, 1]]), ValueError, "1 dimensions"),
    (torch.tensor([0.0, 1.0]), TypeError, "integer dtype"),
])
def test_bad_labels(setup, labels, error, match):
    fsdd, model, counts = setup
    with pytest.raises(error, match=match):
        fsdd.training_loss(model, counts, labels)
    if labels.dim() == 1 and labels.shape[0] == 2:
        with pytest.raises(error, match=match):
            fsdd.sample(model, labels, steps=1)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(steps=0), ValueError, "steps must be at least 1"),
    (dict(steps=2.0), TypeError, "steps must be an int"),
    (dict(top_p=0.0), ValueError, r"top_p must lie in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must lie in \(0, 1\]"),
    (dict(top_p=-0.1), ValueError, r"top_p must lie in \(0, 1\]"),
    (dict(top_p="0.8"), TypeError, "top_p must be a number"),
    (dict(guidance=-1.0), ValueError, "guidance must be a finite number >= 0"),
    (dict(sigma_schedule="sigmoid"), TypeError, "SigmaSchedule"),
])
def test_sample_rejects_bad_arguments(setup, kwargs, error, match):
    fsdd, model, _ = setup
    with pytest.raises(error, match=match):
        fsdd.sample(model, torch.tensor([0, 1]), **kwargs)


def test_sample_rejects_guidance_without_null_label_and_bad_models(setup):
    _, model, _ = setup
    with pytest.raises(ValueError, match="null label"):
        FSDD(8, 5).sample(model, torch.tensor([0]), guidance=2.0)
    fsdd = FSDD(8, 5, num_classes=3)
    with pytest.raises(ValueError, match=r"logits of shape \(1, 8, 6\)"):
        fsdd.sample(lambda z, t, y: torch.zeros(1, 8, 5), torch.tensor([0]), steps=1)
    with pytest.raises(ValueError, match="NaN"):
        fsdd.sample(lambda z, t, y: torch.full((1, 8, 6), math.nan), torch.tensor([0]), steps=1)
    with pytest.raises(TypeError, match="float tensor"):
        fsdd.sample(lambda z, t, y: torch.zeros(1, 8, 6, dtype=torch.int64), torch.tensor([0]), steps=1)


def test_pure_functions_reject_bad_input():
    z = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"probs must have shape \(1, 2, 4\)"):
        greedy_adjust(z, torch.rand(1, 2, 3), 3)
    with pytest.raises(ValueError, match=r"entries must lie in \[0, 3\]"):
        greedy_adjust(torch.tensor([[4, 0]]), torch.rand(1, 2, 4), 3)
    with pytest.raises(TypeError, match="integer dtype"):
        greedy_adjust(z.float(), torch.rand(1, 2, 4), 3)
    with pytest.raises(ValueError, match="finite and non-negative"):
        greedy_adjust(torch.tensor([[1, 1]]), -torch.rand(1, 2, 4), 3)
    for bad in (math.nan, math.inf, -0.5):  # an entry it reads: z = (1, 1) needs one +1, so p at 1 and 2
        probs = torch.rand(1, 2, 4)
        probs[0, 1, 2] = bad
        with pytest.raises(ValueError, match="finite and non-negative where greedy adjustment reads them"):
            greedy_adjust(torch.tensor([[1, 1]]), probs, 3)
        probs[0, 1, 2], probs[0, 1, 0] = 0.5, bad  # an entry it never reads is not checked
        assert int(greedy_adjust(torch.tensor([[1, 1]]), probs, 3).sum()) == 3
    with pytest.raises(ValueError, match="sigma must be finite and non-negative"):
        discretised_gaussian(torch.zeros(1, 2), -torch.ones(1, 2), 3)
    with pytest.raises(TypeError, match="floating dtype"):
        discretised_gaussian(torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2), 3)
    with pytest.raises(ValueError, match="row of zeros"):
        round_fixed_sum(torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="non-negative"):
        round_fixed_sum(-torch.ones(1, 3), 2)
    with pytest.raises(TypeError, match="NoiseKind"):
        fixed_sum_noise(1, 4, 2, kind="binary")
    with pytest.raises(ValueError, match="batch must be at least 1"):
        fixed_sum_noise(0, 4, 2)
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
        top_p_sample(torch.rand(1, 2, 3), 0.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        FSDD(4, 2).q_sample(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[0, 0, 1, 1]]), torch.tensor([1.5]))
