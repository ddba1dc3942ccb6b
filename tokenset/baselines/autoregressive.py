"""Autoregressive baseline: a causal transformer over the token sequence (the paper's "AR, fixed order" family).

Data: tokens (B, M) int64 in [0, C), normally the canonical ascending sequence of the set tokenizer's multiset
(or the ordered control's sequence); the module does not sort.

Network (``ARTokenTransformer``): the same DiTBlock as CountDiT (tokenset.denoiser), with causal attention,
sized by the same ``DenoiserConfig`` width/depth/heads/mlp_ratio as FSDD's network. The class is a prefix token
AND the adaLN conditioning vector (the blocks need one; both come from the same label embedding, with the null
class and class dropout as in CountDiT)::

    [class, t_0, ..., t_{L-1}]  (L + 1 <= M positions)  --embeddings + learnable positional embedding (M, D)-->
    depth x DiTBlock(x, c=class, causal)  --> FinalLayer --> logits (B, L + 1, C)

Output position i gives p(t_i | class, t_<i). Teacher forcing reads the prefix t_0..t_{M-2}; ``training_loss``
is the mean next-token cross-entropy over all M positions. Parameters (CountDiT's in brackets): small preset at
C = 512, M = 64: 2,951,360 [2,951,681]; S at C = 4096, M = 128: 35,798,656 [34,518,273]; B: 135,884,032
[133,622,145]; the transformer trunk is identical to CountDiT's.

Sampling (``sample``): M steps, each draws t_i from softmax(logits / temperature) after optional nucleus (top-p)
truncation; no KV cache: every step recomputes the prefix (M forward passes of lengths 1..M; at M <= 128 and
the small widths this costs about M/2 times one full forward pass, which we accept for simplicity).
Classifier-free guidance on logits, l_u + g (l_c - l_u), as the AR image-generation family does (LlamaGen).
``non_decreasing=True`` restricts t_i >= t_{i-1} (codes below the previous one get probability 0): the canonical
sequence of a multiset is sorted, so this is a free structural prior; it is OFF by default, which is the paper's
plain AR baseline (the model must learn the order itself). Use it only with sorted training data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.baselines.masked import check_sampling_args, draw_categorical, guided_logits
from tokenset.config import DenoiserConfig
from tokenset.denoiser import DiTBlock, FinalLayer, LabelEmbedder, check_int_tensor, init_dit_weights_

__all__ = ["ARTokenTransformer", "training_loss", "sample", "top_p_filter"]


class ARTokenTransformer(nn.Module):
    """Causal DiT-block transformer, class-token prefix: forward(prefix (B, L), labels) -> logits (B, L + 1, C)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.codebook_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.total, d))  # position 0: class token; i + 1: t_i
        self.y_embed = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, cfg.codebook_size)
        init_dit_weights_(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def null_label(self) -> int:
        """The unconditional class: num_classes."""
        return self.cfg.num_classes

    def forward(self, prefix: torch.Tensor, labels: torch.Tensor, *, force_drop: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """prefix: (B, L) int64 in [0, C), 0 <= L <= M - 1; labels: (B,) int64 in [0, num_classes].

        Returns (B, L + 1, C) logits; position i is p(t_i | class, t_<i). force_drop / generator: class dropout
        control, as in CountDiT.forward.
        """
        cfg = self.cfg
        check_int_tensor("prefix", prefix, (None, None), 0, cfg.codebook_size - 1)
        b, n = prefix.shape
        if n > cfg.total - 1:
            raise ValueError(f"prefix: expected length at most M - 1 = {cfg.total - 1}, got {n}")
        check_int_tensor("labels", labels, (b,), 0, cfg.num_classes)
        c = self.y_embed(labels, force_drop, generator)  # (B, D)
        x = torch.cat([c[:, None], self.token_embed(prefix)], dim=1) + self.pos_embed[:, : n + 1]  # (B, L+1, D)
        for block in self.blocks:
            x = block(x, c, causal=True)
        return self.final(x, c)  # (B, L + 1, C)


def training_loss(model: ARTokenTransformer, tokens: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Teacher-forced next-token cross-entropy, mean over all B * M positions.

    tokens: (B, M) int64 in [0, C); labels: (B,) int64. ``generator`` drives the class dropout (training mode).
    Returns dict(loss=scalar with grad, accuracy=top-1 next-token accuracy (detached)).
    """
    cfg = model.cfg
    check_int_tensor("tokens", tokens, (None, cfg.total), 0, cfg.codebook_size - 1)
    logits = model(tokens[:, :-1], labels, generator=generator)  # (B, M, C)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    with torch.no_grad():
        acc = (logits.argmax(-1) == tokens).float().mean()
    return dict(loss=loss, accuracy=acc)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus truncation of (..., K) logits: keep the smallest set of most probable classes whose probability
    reaches ``top_p`` (always at least the most probable one); the rest become -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p  # mass before this class already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -torch.inf)


@torch.no_grad()
def sample(model: ARTokenTransformer, labels: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
           guidance: float = 1.0, generator: torch.Generator | None = None,
           non_decreasing: bool = False) -> torch.Tensor:
    """Ancestral sampling, labels (B,) int64 -> tokens (B, M) int64 in [0, C) (see module docstring).

    temperature > 0; top_p in (0, 1] (1: no truncation); guidance >= 0 (CFG scale on logits, 1: off);
    non_decreasing: forbid codes below the previous one (default False). Class dropout is off whatever the mode.
    """
    cfg = model.cfg
    check_sampling_args(labels, cfg.num_classes, temperature, guidance)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    b, dev = labels.shape[0], labels.device
    codes = torch.arange(cfg.codebook_size, device=dev)
    tokens = torch.zeros(b, 0, dtype=torch.long, device=dev)
    for _ in range(cfg.total):
        logits = guided_logits(model, tokens, labels, guidance)[:, -1].float() / temperature  # (B, C)
        if non_decreasing and tokens.shape[1] > 0:
            logits = logits.masked_fill(codes[None] < tokens[:, -1:], -torch.inf)
        nxt = draw_categorical(top_p_filter(logits, top_p), generator)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return tokens
