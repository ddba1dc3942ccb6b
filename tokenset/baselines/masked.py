"""Masked discrete diffusion (MaskGIT-style absorbing state) over a token SEQUENCE: the paper's "discrete diffusion"
baseline.

Data: tokens (B, M) int64 in [0, C) -- the canonical (ascending) sequence of the set tokenizer's multiset, or the
ordered control's sequence in its own order; this module does not sort (the caller chooses the order). The
absorbing "mask" state is the extra token id ``C`` (``model.mask_id``).

Network (``MaskedTokenTransformer``): the same blocks as CountDiT (tokenset.denoiser.DiTBlock, adaLN-Zero,
bidirectional attention), sized by the same ``DenoiserConfig`` (width, depth, heads, mlp_ratio), so the comparison
with FSDD is at equal width and depth::

    tokens (B, M) in [0, C] --embedding (C + 1 rows)--> + learnable positional embedding (M, D)
    c = LabelEmbedder(labels)         (num_classes + 1 rows, null class + class dropout as in CountDiT)
    depth x DiTBlock(x, c)            bidirectional
    FinalLayer(x, c) -> logits (B, M, C)   (the mask id is never predicted)

There is no timestep input (as MaskGIT): the number of mask tokens tells the network how far along it is.
Parameters (same config as FSDD's CountDiT, whose count is in brackets): small preset at C = 512, M = 64:
2,951,552 [2,951,681]; S at C = 4096, M = 128: 35,799,040 [34,518,273]; B: 135,884,800 [133,622,145]. The trunk is
identical (tests/test_baselines.py); the differences are the token table (C + 1 rows), positional table (M rows)
and read-out (D -> C) against CountDiT's count table (M + 1), positional table (C) and read-out (D -> M + 1).

Training (``training_loss``, MaskGIT): per sample r ~ U(0, 1), mask ratio gamma(r) = cos(pi r / 2), mask
n = ceil(gamma(r) * M) (at least 1) positions chosen uniformly, cross-entropy on the masked positions only.

Sampling (``sample``, MaskGIT's confidence-based parallel decoding): start fully masked; at step s = 1..S predict
all masked positions, draw a token at each (softmax(logits / temperature)), keep as "still masked" the
n_s = floor(M * cos(pi s / (2 S))) drawn tokens of lowest confidence (probability of the drawn token; optionally
perturbed by Gumbel noise scaled by ``choice_temperature * (1 - s / S)``, MaskGIT's annealed randomness), fix the
others. At least one position is fixed per step and none remain masked after step S, so the result never holds
the mask id. Classifier-free guidance combines LOGITS, l = l_u + g (l_c - l_u) (g = 1: conditional alone), as the
MaskGIT family does (FSDD combines probabilities; the sampler of each method uses its field's usual form).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.config import DenoiserConfig
from tokenset.denoiser import DiTBlock, FinalLayer, LabelEmbedder, check_int_tensor, init_dit_weights_

__all__ = ["MaskedTokenTransformer", "training_loss", "sample", "mask_schedule", "guided_logits",
           "draw_categorical", "uniform", "check_sampling_args"]


def mask_schedule(r: torch.Tensor) -> torch.Tensor:
    """MaskGIT's cosine schedule gamma(r) = cos(pi r / 2): the fraction of tokens masked at progress r in [0, 1]."""
    return torch.cos(math.pi / 2 * r)


class MaskedTokenTransformer(nn.Module):
    """Bidirectional DiT-block transformer over (B, M) token sequences with mask id C (see module docstring)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.codebook_size + 1, d)  # codes 0..C-1 and the mask id C
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.total, d))
        self.y_embed = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, cfg.codebook_size)
        init_dit_weights_(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def mask_id(self) -> int:
        """The absorbing state's token id: C."""
        return self.cfg.codebook_size

    @property
    def null_label(self) -> int:
        """The unconditional class: num_classes."""
        return self.cfg.num_classes

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, *, force_drop: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """tokens: (B, M) int64 in [0, C] (C = mask); labels: (B,) int64 in [0, num_classes] -> logits (B, M, C).

        force_drop / generator: class dropout control, as in CountDiT.forward.
        """
        cfg = self.cfg
        check_int_tensor("tokens", tokens, (None, cfg.total), 0, cfg.codebook_size)
        check_int_tensor("labels", labels, (tokens.shape[0],), 0, cfg.num_classes)
        x = self.token_embed(tokens) + self.pos_embed  # (B, M, D)
        c = self.y_embed(labels, force_drop, generator)  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c)  # (B, M, C)


def _random_mask(batch: int, length: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(B, M) bool: per row, n = max(1, ceil(cos(pi r / 2) * M)) positions, r ~ U(0, 1), chosen uniformly."""
    r = uniform((batch,), generator, device)
    n = torch.ceil(mask_schedule(r) * length).clamp(1, length).long()  # (B,)
    scores = uniform((batch, length), generator, device)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, M): a uniform random permutation's ranks
    return ranks < n[:, None]


def training_loss(model: MaskedTokenTransformer, tokens: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """MaskGIT's objective: cross-entropy on the masked positions of a cosine-scheduled random mask.

    tokens: (B, M) int64 in [0, C); labels: (B,) int64 in [0, num_classes]. ``generator`` drives the mask and the
    class dropout (model in training mode). Returns dict(loss=mean CE over masked positions (scalar, with grad),
    accuracy=top-1 accuracy there (detached), mask_fraction=share of positions masked (detached)).
    """
    cfg = model.cfg
    check_int_tensor("tokens", tokens, (None, cfg.total), 0, cfg.codebook_size - 1)
    b, m = tokens.shape
    masked = _random_mask(b, m, tokens.device, generator)  # (B, M) bool
    inputs = torch.where(masked, torch.full_like(tokens, model.mask_id), tokens)
    logits = model(inputs, labels, generator=generator)  # (B, M, C)
    loss = F.cross_entropy(logits[masked], tokens[masked])
    with torch.no_grad():
        acc = (logits[masked].argmax(-1) == tokens[masked]).float().mean()
    return dict(loss=loss, accuracy=acc, mask_fraction=masked.float().mean())


def check_sampling_args(labels: torch.Tensor, num_classes: int, temperature: float, guidance: float) -> None:
    """ValueError unless labels is (B,) int64 in [0, num_classes], temperature > 0 and guidance >= 0."""
    check_int_tensor("labels", labels, (None,), 0, num_classes)
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if not guidance >= 0:
        raise ValueError(f"guidance: expected a non-negative number, got {guidance!r}")


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) floats of ``shape`` on ``device``, drawn from ``generator`` on its own device (CPU or not)."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def draw_categorical(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (..., K) log-probabilities (or logits; -inf = excluded) by the Gumbel-max trick."""
    u = uniform(tuple(log_probs.shape), generator, log_probs.device).clamp(1e-20, 1 - 1e-7)
    return (log_probs.float() - torch.log(-torch.log(u))).argmax(dim=-1)


def guided_logits(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, guidance: float) -> torch.Tensor:
    """model(inputs, labels) with classifier-free guidance on logits, l_u + g (l_c - l_u), class dropout off.

    One batched call of 2B rows (labels, then the null class ``model.null_label``) when guidance != 1, a single
    conditional call otherwise. Used by both baselines' samplers.
    """
    b = labels.shape[0]
    keep = torch.zeros(b, dtype=torch.bool, device=labels.device)
    if guidance == 1.0:
        return model(inputs, labels, force_drop=keep)
    both = model(torch.cat([inputs, inputs]), torch.cat([labels, torch.full_like(labels, model.null_label)]),
                 force_drop=torch.cat([keep, keep]))
    cond, uncond = both[:b], both[b:]
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample(model: MaskedTokenTransformer, labels: torch.Tensor, steps: int = 8, temperature: float = 1.0,
           guidance: float = 1.0, generator: torch.Generator | None = None,
           choice_temperature: float = 0.0) -> torch.Tensor:
    """MaskGIT parallel decoding (see module docstring): labels (B,) int64 -> tokens (B, M) int64 in [0, C).

    steps: decoding steps S >= 1 (more steps than M finish early: at least one token is fixed per step);
    temperature > 0 scales the logits before drawing; guidance >= 0 is the CFG scale on logits;
    choice_temperature >= 0 adds annealed Gumbel noise to the confidences (0: pure confidence ordering).
    Class dropout is off whatever the model's mode.
    """
    cfg = model.cfg
    check_sampling_args(labels, cfg.num_classes, temperature, guidance)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if not choice_temperature >= 0:
        raise ValueError(f"choice_temperature: expected a non-negative number, got {choice_temperature!r}")
    b, m, dev = labels.shape[0], cfg.total, labels.device
    tokens = torch.full((b, m), model.mask_id, dtype=torch.long, device=dev)
    for s in range(1, steps + 1):
        masked = tokens == model.mask_id  # (B, M)
        n_masked = masked.sum(dim=1)  # (B,)
        if int(n_masked.max()) == 0:
            break
        logits = guided_logits(model, tokens, labels, guidance).float() / temperature  # (B, M, C)
        log_probs = torch.log_softmax(logits, dim=-1)
        drawn = draw_categorical(log_probs, generator)  # (B, M)
        conf = log_probs.gather(-1, drawn[..., None]).squeeze(-1)  # log-probability of the drawn token
        if choice_temperature > 0:
            u = uniform((b, m), generator, dev).clamp(1e-20, 1 - 1e-7)
            conf = conf + choice_temperature * (1 - s / steps) * -torch.log(-torch.log(u))
        conf = torch.where(masked, conf, torch.full_like(conf, math.inf))  # fixed tokens are never re-masked
        # how many stay masked after this step: cosine schedule, at least one fewer than now, none at the end
        keep_masked = torch.full_like(n_masked, math.floor(m * math.cos(math.pi / 2 * s / steps)))
        keep_masked = torch.minimum(keep_masked, (n_masked - 1).clamp_min(0))
        if s == steps:
            keep_masked.zero_()
        ranks = conf.argsort(dim=1).argsort(dim=1)  # (B, M): 0 = least confident
        still = ranks < keep_masked[:, None]
        tokens = torch.where(masked & ~still, drawn, tokens)
    return tokens
