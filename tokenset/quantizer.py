"""Cosine vector quantizer: L2-normalised codes, nearest code by cosine similarity, straight-through gradient.

For an encoder output z (any leading shape, last dim D) and a codebook E (C, D):

    z_n = z / |z|,  e_j = E_j / |E_j|,  k = argmax_j <z_n, e_j>,  q = e_k
    z_q = z_n + sg(q - z_n)                                       (straight-through estimator)
    loss = codebook_weight * |sg(z_n) - q|^2 + commitment_weight * |z_n - sg(q)|^2   (VQ-VAE / TiTok, beta 0.25)

Everything here runs in fp32, also under autocast. Token statistics (usage, entropy, perplexity) are computed
from the codes chosen in the call; under ``torch.distributed`` the counts are all-reduced first, so every rank
reports the statistics of the global batch. Optionally, codes left unused for ``restart_every`` training calls
are re-seeded from recent encoder outputs (dead-code restart), identically on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineQuantizer", "code_statistics"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def code_statistics(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Usage, entropy and perplexity of a code histogram.

    counts: (C,) number of times each code was chosen ->
      usage: fraction of the C codes chosen at least once; entropy: of the empirical code distribution, in bits;
      perplexity: 2 ** entropy (the "effective number of codes"). All fp32 scalars.
    """
    counts = counts.float()
    total = counts.sum().clamp_min(1.0)
    p = counts / total
    entropy = -(p * torch.log2(p.clamp_min(1e-30))).sum()
    return {"usage": (counts > 0).float().mean(), "entropy": entropy, "perplexity": torch.exp2(entropy)}


class CosineQuantizer(nn.Module):
    """Nearest-code quantizer over an L2-normalised codebook of ``codebook_size`` codes of dim ``dim``.

    ``forward(z)`` with z: (..., D) float returns ``(z_q, indices, out)``:
      z_q: (..., D) fp32, unit-norm, carrying the straight-through gradient to z;
      indices: (...) int64 in [0, C);
      out: dict of fp32 scalars: loss, codebook_loss, commitment_loss, usage, entropy (bits), perplexity.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        dead_code_restart: bool = True,
        restart_every: int = 100,
        buffer_size: int = 4096,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size} and {dim}")
        if restart_every < 1:
            raise ValueError(f"restart_every must be >= 1, got {restart_every}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.dead_code_restart = dead_code_restart
        self.restart_every = restart_every
        # Codes are compared by direction only, so the init scale does not matter; unit rows keep Adam's
        # relative step size the same for every code.
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, dim), dim=-1))
        # Restart bookkeeping (persistent: a resumed run restarts exactly as an uninterrupted one would).
        n_buf = buffer_size if dead_code_restart else 0
        self.register_buffer("recent", torch.zeros(n_buf, dim))  # (R, D) recent unit encoder outputs
        self.register_buffer("recent_filled", torch.zeros((), dtype=torch.int64))
        self.register_buffer("window_counts", torch.zeros(codebook_size if dead_code_restart else 0))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("restarted", torch.zeros((), dtype=torch.int64))  # codes re-seeded so far

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, commitment_weight={self.commitment_weight}, "
                f"dead_code_restart={self.dead_code_restart}, restart_every={self.restart_every}")

    # ------------------------------------------------------------------------------------------ lookup

    def normalized_codebook(self) -> torch.Tensor:
        """(C, D) fp32 unit rows."""
        return F.normalize(self.codebook.float(), dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (...) int64 in [0, C) -> codes: (..., D) fp32 unit vectors."""
        return F.embedding(indices, self.normalized_codebook())

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> (...) int64: the code of highest cosine similarity (first one on ties)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_n = F.normalize(z.float(), dim=-1)
            return (z_n @ self.normalized_codebook().t()).argmax(dim=-1)

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if z.shape[-1] != self.dim:
            raise ValueError(f"quantizer expects inputs of shape (..., {self.dim}), got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.training and self.dead_code_restart:
                # Before the codebook enters this call's graph, so re-seeding it in place is safe for autograd.
                self._maybe_restart()
            z_n = F.normalize(z.float(), dim=-1)  # (..., D)
            codebook = self.normalized_codebook()  # (C, D)
            flat = z_n.reshape(-1, self.dim)  # (N, D)
            indices = (flat.detach() @ codebook.t()).argmax(dim=-1)  # (N,)
            q = F.embedding(indices, codebook)  # (N, D), differentiable w.r.t. the codebook
            codebook_loss = F.mse_loss(q, flat.detach())
            commitment_loss = F.mse_loss(flat, q.detach())
            z_q = flat + (q - flat).detach()
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (C,)
            if _distributed():
                dist.all_reduce(counts)
            if self.training and self.dead_code_restart:
                self._remember(flat.detach(), counts)
            out = {
                "loss": self.codebook_weight * codebook_loss + self.commitment_weight * commitment_loss,
                "codebook_loss": codebook_loss.detach(),
                "commitment_loss": commitment_loss.detach(),
                **code_statistics(counts),
            }
        return z_q.reshape(z_n.shape), indices.reshape(z_n.shape[:-1]), out

    # ------------------------------------------------------------------------------------------ restarts

    @torch.no_grad()
    def _remember(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Accumulate code usage and keep a ring of recent (local) encoder outputs."""
        self.window_counts += counts
        self.calls += 1
        size = self.recent.shape[0]
        if size == 0 or flat.shape[0] == 0:
            return
        take = flat[torch.randperm(flat.shape[0], device=flat.device)[:size]] if flat.shape[0] > size else flat
        n = take.shape[0]
        start = int(self.recent_filled) % size
        idx = (torch.arange(n, device=flat.device) + start) % size
        self.recent[idx] = take.to(self.recent.dtype)
        self.recent_filled += n

    @torch.no_grad()
    def _maybe_restart(self) -> None:
        """Every ``restart_every`` calls: codes unused over the window take the place of random recent outputs.

        The dead set comes from all-reduced counts, so it is the same on every rank; the replacements are drawn on
        rank 0 and broadcast, so the codebooks stay identical across ranks.
        """
        calls = int(self.calls)
        if calls == 0 or calls % self.restart_every != 0 or int(self.window_counts.sum()) == 0:
            return
        dead = (self.window_counts == 0).nonzero().squeeze(1)  # (K,)
        available = min(int(self.recent_filled), self.recent.shape[0])
        if dead.numel() and available:
            pick = torch.randint(available, (dead.numel(),), device=dead.device)
            new = self.recent[pick] + 0.01 / math.sqrt(self.dim) * torch.randn_like(self.recent[pick])
            if _distributed():
                dist.broadcast(new, src=0)
            self.codebook.data[dead] = F.normalize(new, dim=-1).to(self.codebook.dtype)
            self.restarted += dead.numel()
        self.window_counts.zero_()
