"""How a matching decoder reads a token set: a slot generator, matching costs, Hungarian and Chamfer set losses.

A matching decoder does not read the token set as a set. It predicts M *ordered* slots from a pooled summary of
the set and supervises each slot with one of the M targets (the image's token indices), chosen by a matching:

    codes (B, M, D) -> token_embed -> mean over the M tokens -> summary (B, W)
      -> SlotGenerator: summary + a learnable slot positional embedding (M, W) -> ``depth`` self-attention blocks
         over the slots -> slot features (B, M, W)  (what the decoder's transformer reads, in slot order)
                                                   -> LayerNorm -> linear -> logits (B, M, C) over the codebook
      -> cost[b, i, j] = cross-entropy of slot i against target j  (B, M slots, M targets), one batched gather
      -> "hungarian": one ``scipy.optimize.linear_sum_assignment`` per sample (CPU, numpy) gives a one-to-one
         assignment; the loss is the mean cost of the assigned pairs (DETR's set loss)
         "chamfer": every target goes to its cheapest slot and every slot to its cheapest target; the loss is the
         mean of the first plus the mean of the second (no one-to-one constraint)

No gradient passes through the assignment itself (it is a discrete choice made on detached costs); the loss of the
chosen pairs differentiates the slot logits, hence the slot generator and, through the summary, the encoder.

The Chamfer loss ignores multiplicities. Several equal targets can all claim the same slot, and a slot is only
pulled towards *some* target, so only the support (the distinct codes) of the target multiset is supervised: once
the slots cover the distinct codes, targets (a, a, b, c), (a, b, b, c) and (a, b, c, c) all get the same (minimal)
loss, i.e. a set with repeats costs the same as the set with those repeats replaced by other copies of its codes.
The Hungarian loss distinguishes them. Token sets do repeat codes (see the README's "largest repeat" column).

A bottom-layer module: it imports no other tokenset module. ``tokenset.tokenizer`` builds its matching arms
(``decoder_input`` "hungarian" / "chamfer") from it; the matching-instability probes, which need a trained
tokenizer, live in ``tokenset.baselines.matching``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["MATCHING_ARMS", "SlotGenerator", "matching_cost", "hungarian_assignment", "hungarian_loss",
           "chamfer_assignment", "chamfer_loss", "matching_loss"]

MATCHING_ARMS = ("hungarian", "chamfer")  # TokenizerConfig.decoder_input values served by this module


# --------------------------------------------------------------------------------------------- the slot generator


class SlotGenerator(nn.Module):
    """Pooled summary (B, W) -> (slot features (B, M, W), logits (B, M, C)) for M ordered slots.

    Slot i starts as summary + position_i (a learnable slot positional embedding, so the slots are ordered and
    distinguishable), then ``depth`` pre-norm self-attention blocks let the slots coordinate (as DETR's queries).
    """

    def __init__(self, width: int, num_slots: int, codebook_size: int, heads: int, mlp_ratio: float,
                 depth: int = 1) -> None:
        super().__init__()
        if min(width, num_slots, codebook_size, heads, depth) < 1 or width % heads:
            raise ValueError(f"SlotGenerator: expected positive width/num_slots/codebook_size/heads/depth with width "
                             f"divisible by heads, got width={width}, num_slots={num_slots}, "
                             f"codebook_size={codebook_size}, heads={heads}, depth={depth}")
        self.num_slots, self.codebook_size = num_slots, codebook_size
        self.summary_proj = nn.Linear(width, width)
        self.slot_positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(1, num_slots, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=int(width * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, codebook_size)

    def forward(self, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # summary: (B, W) float -> slots (B, M, W) (they carry the slot positional embedding), logits (B, M, C)
        if summary.ndim != 2 or summary.shape[1] != self.summary_proj.in_features:
            raise ValueError(f"summary: expected shape (B, {self.summary_proj.in_features}), "
                             f"got {tuple(summary.shape)}")
        slots = self.summary_proj(summary).unsqueeze(1) + self.slot_positional_embedding  # (B, M, W)
        for block in self.blocks:
            slots = block(slots)
        return slots, self.classifier(self.norm(slots))


# --------------------------------------------------------------------------------------------- costs and matchings


def matching_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy cost matrix: logits (B, M, C) float, targets (B, N) integer in [0, C) ->
    cost (B, M, N) fp32 with cost[b, i, j] = -log softmax(logits[b, i])[targets[b, j]] (slot i, target j)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or not logits.dtype.is_floating_point:
        got = (tuple(logits.shape), logits.dtype) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a float tensor (B, M, C), got {got}")
    b, m, c = logits.shape
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool \
            or targets.ndim != 2 or targets.shape[0] != b or targets.shape[1] == 0:
        got = (tuple(targets.shape), targets.dtype) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets: expected an integer tensor ({b}, N) (the logits' batch), got {got}")
    if int(targets.min()) < 0 or int(targets.max()) >= c:
        raise ValueError(f"targets: expected values in [0, {c}) (the logits' codebook), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B, M, C)
    return -log_p.gather(2, targets.long().unsqueeze(1).expand(b, m, targets.shape[1]))  # (B, M, N)


def _check_cost(cost: torch.Tensor, square: bool) -> None:
    if not isinstance(cost, torch.Tensor) or cost.ndim != 3 or not cost.dtype.is_floating_point:
        got = (tuple(cost.shape), cost.dtype) if isinstance(cost, torch.Tensor) else type(cost).__name__
        raise ValueError(f"cost: expected a float tensor (B, M slots, N targets), got {got}")
    if square and cost.shape[1] != cost.shape[2]:
        raise ValueError(f"cost: a one-to-one assignment needs as many slots as targets, got shape "
                         f"{tuple(cost.shape)}")
    if cost.numel() and not bool(torch.isfinite(cost).all()):
        raise ValueError("cost: expected finite values, found NaN or inf")


def hungarian_assignment(cost: torch.Tensor) -> torch.Tensor:
    """The minimum-cost one-to-one assignment of each sample: cost (B, M, M) float (slot i, target j) ->
    slot_of_target (B, M) int64 on cost's device, a permutation of 0..M-1 per row. One
    ``scipy.optimize.linear_sum_assignment`` per sample on a detached CPU copy: no gradient, a discrete choice."""
    _check_cost(cost, square=True)
    c = cost.detach().float().cpu().numpy()
    out = np.empty(c.shape[:2], dtype=np.int64)
    for b in range(c.shape[0]):
        rows, cols = linear_sum_assignment(c[b])
        out[b, cols] = rows
    return torch.from_numpy(out).to(cost.device)


def chamfer_assignment(cost: torch.Tensor) -> torch.Tensor:
    """Each target's cheapest slot: cost (B, M, N) -> (B, N) int64. Not one-to-one: equal targets share a slot."""
    _check_cost(cost, square=False)
    return cost.detach().argmin(dim=1)


def hungarian_loss(cost: torch.Tensor, assignment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cost of the assigned (slot, target) pairs: cost (B, M, M) -> (loss fp32 scalar, slot_of_target (B, M)).

    ``assignment`` defaults to ``hungarian_assignment(cost)``; the gradient reaches ``cost`` at the chosen entries.
    """
    if assignment is None:
        assignment = hungarian_assignment(cost)
    picked = cost.gather(1, assignment.unsqueeze(1)).squeeze(1)  # (B, M): cost[b, slot_of_target[b, j], j]
    return picked.mean(), assignment


def chamfer_loss(cost: torch.Tensor) -> torch.Tensor:
    """Chamfer loss: mean over targets of their cheapest slot + mean over slots of their cheapest target.

    cost (B, M, N) -> fp32 scalar. It ignores multiplicities (see the module docstring): equal targets may all
    claim one slot, and the loss is minimal as soon as the slots cover the *distinct* target codes, so (a, a, b, c)
    and (a, b, c, c) cannot be told apart by it.
    """
    _check_cost(cost, square=False)
    return cost.min(dim=1).values.mean() + cost.min(dim=2).values.mean()


def matching_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The set loss of arm ``kind`` ("hungarian" | "chamfer"): logits (B, M, C), targets (B, M) int ->
    {"loss": fp32 scalar with gradient to the logits, "assignment": (B, M) int64 slot of each target}."""
    if kind not in MATCHING_ARMS:
        raise ValueError(f"kind: expected one of {list(MATCHING_ARMS)}, got {kind!r}")
    cost = matching_cost(logits, targets)
    if kind == "hungarian":
        loss, assignment = hungarian_loss(cost)
    else:
        loss, assignment = chamfer_loss(cost), chamfer_assignment(cost)
    return {"loss": loss, "assignment": assignment}
