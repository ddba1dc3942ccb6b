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

from tokenset.fsdd.adjust import greedy_adjust, greedy_adjust_gaussian
from tokenset.fsdd.kernel import WINDOW_SIGMAS, discretised_gaussian, sample_discretised_gaussian
from tokenset.fsdd.posterior import classifier_free_guidance, top_p_sample
from tokenset.fsdd.prior import fixed_sum_noise, round_fixed_sum
from tokenset.fsdd.process import FSDD, SIGMA_EPS, Model, sigma_scale

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
