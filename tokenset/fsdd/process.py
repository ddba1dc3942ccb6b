"""The FSDD process: forward kernel q(z_t | x0, x1), training loss, sampler and its sigma schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenset.config import FSDDConfig, NoiseKind, SigmaSchedule
from tokenset.fsdd.adjust import _gains_of, _greedy_rounds
from tokenset.fsdd.checks import (_check_counts, _check_float_dtype, _check_int, _check_integer_dtype,
                                   _check_on_simplex, _check_tensor, _one_thread)
from tokenset.fsdd.kernel import _GaussianKernel
from tokenset.fsdd.posterior import _ModelPosterior, _check_top_p
from tokenset.fsdd.prior import fixed_sum_noise

Model = Callable[[Tensor, Tensor, Tensor], Tensor]
"""model(z (B, C) int64, t (B,) float32 in [0, 1], labels (B,) int64) -> logits (B, C, M + 1) float."""

SIGMA_EPS = 1e-6
"""Added to every sigma of the kernel (the paper's 1e-6). The discretisation is exact for sigma = 0 anyway."""


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
