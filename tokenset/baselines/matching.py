"""Matching instability: do a matching tokenizer's targets move between its slots as it trains?

The paper argues against matching-based set decoding (``tokenset.set_decoders``: a slot generator supervised
through a Hungarian or Chamfer assignment) because its targets move between iterations. This module measures it
on a fixed probe batch: ``probe_assignment`` gives the current assignment at one evaluation, ``changed_share`` the
share of targets whose slot changed between two evaluations, and ``InstabilityProbe`` packages both as the
``on_log`` hook of ``tokenset.train.fit_tokenizer``.

``MATCHING_ARMS`` is re-exported from ``tokenset.set_decoders`` (the arms this probe applies to).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenset.set_decoders import MATCHING_ARMS, matching_loss

if TYPE_CHECKING:  # types only: the probe reads a trained tokenizer
    from tokenset.tokenizer import SetTokenizer

__all__ = ["MATCHING_ARMS", "canonical_assignment", "probe_assignment", "changed_share", "InstabilityProbe"]


# --------------------------------------------------------------------------------------------- instability


def canonical_assignment(assignment: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Remove the arbitrary part of an assignment: among targets of one sample that hold the same code, the
    assigned slots are handed out in ascending order of target index (swapping two equal targets is no change).

    assignment, targets: (B, N) integer -> (B, N) int64. The multiset of slots of each code is unchanged.
    """
    if assignment.shape != targets.shape or assignment.ndim != 2:
        raise ValueError(f"assignment and targets: expected two (B, N) tensors, got {tuple(assignment.shape)} and "
                         f"{tuple(targets.shape)}")
    a, t = assignment.detach().cpu().numpy().astype(np.int64), targets.detach().cpu().numpy()
    out = a.copy()
    for b in range(a.shape[0]):
        order = np.lexsort((np.arange(t.shape[1]), t[b]))  # target indices grouped by code, ascending index
        codes = t[b, order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
            if hi - lo > 1:
                idx = order[lo:hi]
                out[b, idx] = np.sort(a[b, idx])
    return torch.from_numpy(out).to(assignment.device)


@torch.no_grad()
def probe_assignment(model: "SetTokenizer", images: torch.Tensor) -> torch.Tensor:
    """The current assignment of a matching tokenizer on a probe batch: slot of each target, (B, M) int64 on CPU.

    images: (B, 3, H, W) uint8 in [0, 255] or float in [-1, 1]. Target j is the j-th latent token of the encoder
    (its index is stable across training even for set tokenizers: the encoder's latent queries are distinct
    parameters); the assignment is the arm's own (Hungarian: one-to-one; Chamfer: cheapest slot), canonicalised
    over equal targets (``canonical_assignment``). Runs in eval mode (no dead-code restarts, no RNG draws) and
    restores the model's mode.
    """
    kind = getattr(getattr(model, "cfg", None), "decoder_input", None)
    if kind not in MATCHING_ARMS:
        raise ValueError(f"model: expected a SetTokenizer with decoder_input in {list(MATCHING_ARMS)}, got "
                         f"{type(model).__name__} with decoder_input={kind!r}")
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1.0
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        codes, tokens, _ = model.quantize(images.to(device))
        _, logits = model.decoder.latents(codes)
        assignment = matching_loss(kind, logits, tokens)["assignment"]
    finally:
        model.train(was_training)
    return canonical_assignment(assignment, tokens).cpu()


def changed_share(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Share of targets whose assigned slot differs between two assignments of one probe batch: (B, M) each."""
    if previous.shape != current.shape:
        raise ValueError(f"previous and current: expected assignments of one probe batch (equal shapes), got "
                         f"{tuple(previous.shape)} and {tuple(current.shape)}")
    return float((previous.cpu() != current.cpu()).float().mean())


class InstabilityProbe:
    """``on_log`` hook for ``fit_tokenizer``: at each log row, the share of the probe batch's targets whose slot
    changed since the previous row (``match_changed``; NaN at the first row, which has nothing to compare with).

    probe = InstabilityProbe(val_images[:64]); fit_tokenizer(..., on_log=probe); probe.history -> [(step, share)]
    """

    def __init__(self, images: torch.Tensor, column: str = "match_changed") -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a non-empty probe batch (B, 3, H, W), got {got}")
        self.images, self.column = images, column
        self.previous: torch.Tensor | None = None
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int, model: "SetTokenizer") -> dict[str, float]:
        current = probe_assignment(model, self.images)
        share = math.nan if self.previous is None else changed_share(self.previous, current)
        self.previous = current
        self.history.append((step, share))
        return {self.column: share}
