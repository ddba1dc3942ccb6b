"""CountDiT: the DiT that FSDD calls as ``model(z, t, labels) -> logits`` over the counts of every codebook entry.

The network of the paper's section 3 ("Fixed-Sum Discrete Diffusion", Model). It reads a noisy count vector
``z_t`` (one sequence position per codebook entry, ``C`` positions) and predicts, at every position, a categorical
distribution over the clean count ``x1_j in {0, ..., M}``::

    z: (B, C) int64 in [0, M] --count embedding (M + 1 rows)--> (B, C, D)
                               + learnable positional embedding (C, D)
    c = TimestepEmbedder(t) + LabelEmbedder(labels)                      (B, D)
    depth x DiTBlock(x, c)          adaLN-Zero: shift/scale/gate from c, gates initialised to 0
    FinalLayer(x, c)                adaLN shift/scale, one linear D -> M + 1 shared by all positions
    -> logits (B, C, M + 1)

Patches (``cfg.patch = p``, default 1 = the paper's network). Like DiT's patch size, p consecutive codebook
entries share one sequence position: the C / p positions embed the sum of p slot-specific count embeddings
(``p (M + 1)`` rows), and the read-out emits ``p (M + 1)`` logits per position, reshaped to (B, C, M + 1). Attention
then costs (C / p)^2 instead of C^2: the CPU lever of the ``small`` preset (see ``DenoiserConfig``). Everything
downstream (loss, sampler) sees the same (B, C, M + 1) logits.

The network knows nothing about fixed sums or the diffusion process (tokenset/fsdd/); it is a plain
conditional classifier at every position.

Classifier-free guidance. The label table has ``num_classes + 1`` rows; row ``num_classes`` (``null_label``)
is the unconditional "null" class. In training mode each label is replaced by the null class with probability
``cfg.class_dropout`` (0.1 in the paper), so the same network learns p(x1 | z_t, class) and p(x1 | z_t). At
sampling time FSDD evaluates both (labels and ``null_label``) and combines them on PROBABILITIES, as the paper
and the official code do::

    p = p_u + g * (p_c - p_u),   p = clamp(p, min=0),   p = p / p.sum(-1)     (per position, over 0..M)

with ``g`` the guidance scale (g = 1: conditional model alone). That combination lives in the sampler; this module
only provides the null class. Class dropout draws from the global RNG unless a ``generator`` is passed, and
``force_drop`` replaces it entirely (True -> null class, False -> keep), so a caller can make it deterministic.
Call ``model.eval()`` before sampling: in training mode labels are dropped at random.

Parameter count (what the tests check). At C = 4096, M = 128, 1000 classes, preset S (depth 12, width 384,
6 heads, mlp ratio 4) has 34,518,273 parameters and preset B (depth 12, width 768, 12 heads) 133,622,145. We count
everything: blocks (attention qkv/proj with biases, MLP, adaLN-Zero linear to 6D; 12 * 2.66M for S) dominate;
then the positional embedding C*D, the final adaLN (D -> 2D), the label table (1001 rows), the timestep MLP
(256 -> D -> D), the count table (M + 1 rows) and the single output linear D -> M + 1 shared by all positions (a
per-position read-out would add C*D*(M+1) = 203M for S: not what the paper has). The paper reports 36M and 137M.
The difference is one table: the official code sizes its count embedding by the sequence length (C + 1 = 4097
rows) although counts only reach M = 128, so it carries (C - M) * D never-read parameters (1.52M for S, 3.05M for
B); adding them gives 36,041,985 and 136,669,569, the paper's 36M and 137M. We keep the M + 1-row table (only those
rows can be read), so S is 4.1% and B 2.5% under the paper's totals. The CPU preset ``small`` (width 64,
depth 3, 4 heads, patch 8) at C = 1024, M = 64, 10 classes has 328,968 (327,617 with patch 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.config import DenoiserConfig

__all__ = [
    "CountDiT",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "SelfAttention",
    "TimestepEmbedder",
    "check_int_tensor",
    "count_parameters",
    "init_dit_weights_",
    "modulate",
]


# --------------------------------------------------------------------------------------------- input checks


def check_int_tensor(name: str, x: object, shape: tuple[int | None, ...], low: int, high: int) -> torch.Tensor:
    """Raise ValueError unless ``x`` is an int64 tensor of ``shape`` (None: any size) with values in [low, high]."""
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected an int64 tensor of shape {want}, got {type(x).__name__}")
    if x.dtype != torch.int64:
        raise ValueError(f"{name}: expected dtype torch.int64, got {x.dtype}")
    if x.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if x.numel() > 0:
        lo, hi = int(x.min()), int(x.max())
        if lo < low or hi > high:
            raise ValueError(f"{name}: expected values in [{low}, {high}], got values in [{lo}, {hi}]")
    return x


def _check_time(t: object, batch: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t: expected a float tensor of shape ({batch},), got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"t: expected a floating-point tensor, got dtype {t.dtype}")
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t: expected shape ({batch},), got {tuple(t.shape)}")
    if t.numel() > 0:
        lo, hi = float(t.min()), float(t.max())
        if not (0.0 <= lo and hi <= 1.0):  # also rejects NaN
            raise ValueError(f"t: expected values in [0, 1], got values in [{lo}, {hi}]")
    return t


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- building blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift``; x: (B, L, D), shift/scale: (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features (``freq_dim``) -> MLP -> (B, D).

    t is multiplied by 1000 first so that the frequencies (periods 1 .. 10000) resolve the unit interval as they
    resolve DiT's integer timesteps 0..999.
    """

    def __init__(self, width: int, freq_dim: int = 256, max_period: float = 10_000.0, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.max_period, self.scale = freq_dim, max_period, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def sinusoidal(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) float -> (B, freq_dim): [cos(t w_k), sin(t w_k)] with w_k = max_period^(-k / half)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * self.scale)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (B,) in [0, num_classes] -> (B, D); row ``num_classes`` is the null class.

    In training mode each label is replaced by the null class with probability ``dropout`` (classifier-free
    guidance training). ``force_drop`` (B,) bool overrides the random choice in any mode: True -> null, False -> keep.
    """

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, width)

    def drop(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels after class dropout (see class docstring); (B,) int64."""
        if force_drop is not None:
            if force_drop.dtype != torch.bool or tuple(force_drop.shape) != tuple(labels.shape):
                raise ValueError(f"force_drop: expected a bool tensor of shape {tuple(labels.shape)}, "
                                 f"got {force_drop.dtype} of shape {tuple(force_drop.shape)}")
            return torch.where(force_drop.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        if self.training and self.dropout > 0:
            u = torch.rand(labels.shape, generator=generator, device=labels.device if generator is None
                           else generator.device).to(labels.device)
            return torch.where(u < self.dropout, torch.full_like(labels, self.num_classes), labels)
        return labels

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.table(self.drop(labels, force_drop, generator))


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``; ``causal=True`` masks the future."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        # (B, L, 3D) -> 3 x (B, heads, L, D / heads)
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT): pre-norm without affine parameters; shift, scale and
    gate of both sub-layers regressed from the conditioning vector c; the regressor starts at zero so every block
    starts as the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x: (B, L, D), c: (B, D) -> (B, L, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), causal=causal)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c) then one linear D -> ``out`` shared by all positions; zero-initialised."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_dit_weights_(model: nn.Module) -> None:
    """DiT's initialisation: Xavier-uniform linears with zero bias; embeddings and positional tables N(0, 0.02);
    timestep MLP N(0, 0.02); every adaLN regressor and the final linear zero (adaLN-Zero: the network starts as
    the identity map followed by a zero read-out, i.e. uniform logits)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    for m in model.modules():
        if isinstance(m, TimestepEmbedder):
            nn.init.normal_(m.mlp[0].weight, std=0.02)
            nn.init.normal_(m.mlp[2].weight, std=0.02)
        elif isinstance(m, DiTBlock):
            nn.init.zeros_(m.adaLN[-1].weight)
            nn.init.zeros_(m.adaLN[-1].bias)
        elif isinstance(m, FinalLayer):
            for p in (m.adaLN[-1].weight, m.adaLN[-1].bias, m.linear.weight, m.linear.bias):
                nn.init.zeros_(p)


# --------------------------------------------------------------------------------------------- the network


class CountDiT(nn.Module):
    """DiT over the C count positions: ``forward(z, t, labels) -> logits (B, C, M + 1)`` (see module docstring)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        p, k = cfg.patch, cfg.total + 1
        self.count_embed = nn.Embedding(p * k, d)  # counts 0..M, one table per slot of a position
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.codebook_size // p, d))  # one row per position
        self.t_embed = TimestepEmbedder(d, freq_dim=cfg.time_freq_dim)
        self.y_embed = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, p * k)
        self.register_buffer("slot_offset", torch.arange(p) * k, persistent=False)
        init_dit_weights_(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def null_label(self) -> int:
        """The label of the unconditional (null) class: ``num_classes``."""
        return self.cfg.num_classes

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, *,
                force_drop: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits of p(x1_j = k | z_t, t, class) for every position j and count k.

        z: (B, C) int64 in [0, M] -- the noisy counts z_t; t: (B,) float in [0, 1]; labels: (B,) int64 in
        [0, num_classes] (num_classes = null class). force_drop: (B,) bool, overrides class dropout;
        generator: RNG of the class dropout in training mode. Returns (B, C, M + 1) float logits.
        """
        cfg = self.cfg
        check_int_tensor("z", z, (None, cfg.codebook_size), 0, cfg.total)
        b = z.shape[0]
        _check_time(t, b)
        check_int_tensor("labels", labels, (b,), 0, cfg.num_classes)
        p = cfg.patch
        if p == 1:
            x = self.count_embed(z)  # (B, C, D)
        else:  # slot s of a position reads rows s (M + 1) .. s (M + 1) + M; the slots' embeddings add up
            x = self.count_embed(z.view(b, -1, p) + self.slot_offset).sum(2)  # (B, C / p, D)
        x = x + self.pos_embed
        c = self.t_embed(t) + self.y_embed(labels, force_drop, generator)  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c).view(b, cfg.codebook_size, cfg.total + 1)  # (B, C, M + 1)
