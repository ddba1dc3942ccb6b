"""The set tokenizer: an image becomes an unordered multiset of M codebook indices (paper, Sec. 1).

    images (B, 3, H, W) in [-1, 1]
      -> ViT encoder over [class token, patches] + positional embedding, with M learnable latent tokens appended
         (NO latent positional embedding); the M latent outputs -> LayerNorm -> linear to the token dim
      -> cosine quantizer -> tokens (B, M) int64 in [0, C)
      -> decoder: linear token dim -> width; [class embedding, grid of mask tokens] + positional embedding, the M
         token embeddings appended (in a random per-sample order while training); transformer; read-out at the grid
      -> pixel head (linear patch head, small CNN, or a MaskGIT-VQGAN-style CNN) -> images (B, 3, H, W)

Because neither the encoder nor the decoder gives the latent tokens a position, the decoder is a function of the
token multiset: permuting the tokens changes its output only by float rounding. ``ordered=True`` builds TiTok's
ordered control instead: a learnable latent positional embedding in encoder and decoder, and no shuffling. That is
the one difference between the two (paper, Sec. 1).

``decoder_input`` selects how the decoder sees the tokens (ablation arms): "set" (the M embeddings, above),
"mean" (their mean, one token: plain pooling), "pma" (M learnable seeds cross-attending to them once: pooling by
multi-head attention, as in the Set Transformer), "hungarian" / "chamfer" (matching: M ordered slots predicted from
the mean of the embedded tokens, each classified over the codebook and matched to the image's tokens, which serve
only as training targets; ``tokenset.set_decoders``). All five are permutation invariant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenset.bijection import counts_to_set
from tokenset.config import TokenizerConfig, from_mapping
from tokenset.quantizer import CosineQuantizer
from tokenset.set_decoders import MATCHING_ARMS, SlotGenerator, matching_loss

__all__ = ["SetTokenizer", "Transformer"]

_RANGE_TOLERANCE = 1e-3  # images may exceed [-1, 1] by this much (rounding of uint8 -> float conversions)


# --------------------------------------------------------------------------------------------- transformer


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention with ``context``) through F.scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, W), context: (B, S, W) or None (self-attention) -> (B, L, W)
        context = x if context is None else context
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(context), "b s (two h d) -> two b h s d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """LN -> ``depth`` pre-norm blocks -> LN, over (B, L, width)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_post = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm_post(x)


# --------------------------------------------------------------------------------------------- encoder


class Encoder(nn.Module):
    """images (B, 3, H, W) -> latents (B, M, token_dim), unnormalised."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        w, p = cfg.width, cfg.patch_size
        self.patch_size = p
        scale = w ** -0.5
        self.patch_embed = nn.Linear(cfg.channels_in * p * p, w)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, 1 + cfg.grid ** 2, w))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, cfg.num_tokens, w))
        # The ordered control's one addition (TiTok): a position for each latent token.
        self.latent_positional_embedding = (
            nn.Parameter(scale * torch.randn(1, cfg.num_tokens, w)) if cfg.ordered else None
        )
        self.transformer = Transformer(w, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.to_token = nn.Linear(w, cfg.token_dim)  # the paper's 1x1 projection of the latent outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        patches = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=self.patch_size, q=self.patch_size)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), self.patch_embed(patches)], dim=1)
        x = x + self.positional_embedding  # (B, 1 + N, W)
        latents = self.latent_tokens.expand(b, -1, -1)
        if self.latent_positional_embedding is not None:
            latents = latents + self.latent_positional_embedding
        x = self.transformer(torch.cat([x, latents], dim=1))  # (B, 1 + N + M, W)
        return self.to_token(x[:, -latents.shape[1]:])  # (B, M, token_dim)


# --------------------------------------------------------------------------------------------- pixel heads


class LinearHead(nn.Module):
    """Grid features (B, N, W) -> pixels by one linear map per patch."""

    def __init__(self, width: int, patch: int, grid: int, channels: int) -> None:
        super().__init__()
        self.patch, self.grid = patch, grid
        self.linear = nn.Linear(width, patch * patch * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.linear(x), "b (h w) (p q c) -> b c (h p) (w q)",
                         h=self.grid, p=self.patch, q=self.patch)


class ConvHead(nn.Module):
    """Grid features -> a ``hidden``-channel image by a linear patch map, then two residual 3x3 conv blocks."""

    def __init__(self, width: int, patch: int, grid: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.patch, self.grid = patch, grid
        self.linear = nn.Linear(width, patch * patch * hidden)
        self.res = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                          nn.Conv2d(hidden, hidden, 3, padding=1))
            for _ in range(2)
        )
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.linear(x), "b (h w) (p q c) -> b c (h p) (w q)",
                      h=self.grid, p=self.patch, q=self.patch)
        for block in self.res:
            x = x + block(x)
        return self.out(x)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(32 if c_in % 32 == 0 else 1, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(32 if c_out % 32 == 0 else 1, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class VQGANHead(nn.Module):
    """MaskGIT-VQGAN-style CNN decoder from the (grid x grid) feature map up to pixels.

    Channel multipliers (1, 1, 2, 2, 4) of ``hidden`` channels, 2 residual blocks per level, nearest x2 upsampling
    + 3x3 conv between levels, GroupNorm + SiLU + 3x3 conv out; log2(patch) upsamplings (4 for patch 16).
    """

    MULTS = (1, 1, 2, 2, 4)

    def __init__(self, width: int, patch: int, grid: int, channels: int, hidden: int) -> None:
        super().__init__()
        ups = int(round(math.log2(patch)))
        if 2 ** ups != patch:
            raise ValueError(f"pixel_head 'vqgan' needs a power-of-two patch_size, got {patch}")
        self.grid = grid
        mults = (self.MULTS * 2)[-(ups + 1):] if ups + 1 > len(self.MULTS) else self.MULTS[-(ups + 1):]
        chans = [hidden * m for m in reversed(mults)]  # coarse (grid) -> fine (pixels)
        layers: list[nn.Module] = [nn.Conv2d(width, chans[0], 3, padding=1),
                                   _ResBlock(chans[0], chans[0]), _ResBlock(chans[0], chans[0])]
        for c_prev, c in zip(chans[:-1], chans[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_prev, c_prev, 3, padding=1),
                       _ResBlock(c_prev, c), _ResBlock(c, c)]
        layers += [nn.GroupNorm(32 if chans[-1] % 32 == 0 else 1, chans[-1]), nn.SiLU(),
                   nn.Conv2d(chans[-1], channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(rearrange(x, "b (h w) d -> b d h w", h=self.grid))


# --------------------------------------------------------------------------------------------- decoder


class Decoder(nn.Module):
    """Unit token codes (B, M, token_dim) -> images (B, 3, H, W), unclamped."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        w, n = cfg.decoder_width, cfg.grid ** 2
        scale = w ** -0.5
        self.input_mode = cfg.decoder_input
        self.token_embed = nn.Linear(cfg.token_dim, w)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, 1 + n, w))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_positional_embedding = (
            nn.Parameter(scale * torch.randn(1, cfg.num_tokens, w)) if cfg.ordered else None
        )
        if cfg.decoder_input == "pma":
            self.pma_seeds = nn.Parameter(scale * torch.randn(1, cfg.num_tokens, w))
            self.pma_norm = nn.LayerNorm(w)
            self.pma_attn = Attention(w, cfg.decoder_heads)
        if cfg.decoder_input in MATCHING_ARMS:
            self.slots = SlotGenerator(w, cfg.num_tokens, cfg.codebook_size, cfg.decoder_heads, cfg.mlp_ratio,
                                       depth=cfg.slot_depth)
        self.transformer = Transformer(w, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        if cfg.pixel_head == "linear":
            self.head: nn.Module = LinearHead(w, cfg.patch_size, cfg.grid, cfg.channels_in)
        elif cfg.pixel_head == "conv":
            self.head = ConvHead(w, cfg.patch_size, cfg.grid, cfg.channels_in, cfg.head_channels)
        else:
            self.head = VQGANHead(w, cfg.patch_size, cfg.grid, cfg.channels_in, cfg.head_channels)

    def latents(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit codes (B, M, D) -> (what the transformer reads beside the grid (B, M', W), slot logits (B, M, C)
        over the codebook for the matching arms, else None)."""
        b = codes.shape[0]
        latents = self.token_embed(codes)  # (B, M, W)
        if self.latent_positional_embedding is not None:
            latents = latents + self.latent_positional_embedding
        if self.input_mode == "mean":
            return latents.mean(dim=1, keepdim=True), None  # (B, 1, W)
        if self.input_mode == "pma":
            return self.pma_seeds.expand(b, -1, -1) + self.pma_attn(
                self.pma_seeds.expand(b, -1, -1), self.pma_norm(latents)), None  # (B, M, W)
        if self.input_mode in MATCHING_ARMS:
            return self.slots(latents.mean(dim=1))  # ordered slots (B, M, W), logits (B, M, C)
        return latents, None

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.forward_with_logits(codes)[0]

    def forward_with_logits(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """codes (B, M, D) -> (images (B, 3, H, W) unclamped, slot logits (B, M, C) or None; see ``latents``)."""
        b = codes.shape[0]
        latents, logits = self.latents(codes)
        grid = self.mask_token.expand(b, self.positional_embedding.shape[1] - 1, -1)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), grid], dim=1) + self.positional_embedding
        n = x.shape[1]
        x = self.transformer(torch.cat([x, latents], dim=1))  # (B, 1 + N + M', W)
        return self.head(x[:, 1:n]), logits  # read-out at the N grid positions -> (B, 3, H, W)


# --------------------------------------------------------------------------------------------- the tokenizer


class SetTokenizer(nn.Module):
    """Image <-> multiset of M codebook indices (or, with ``cfg.ordered``, TiTok's ordered sequence).

    Public API: ``encode``, ``decode``, ``decode_counts``, ``forward`` (training), ``from_checkpoint``.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TokenizerConfig):
            raise TypeError(f"SetTokenizer expects a TokenizerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = CosineQuantizer(
            cfg.codebook_size, cfg.token_dim, commitment_weight=cfg.commitment_weight,
            codebook_weight=cfg.codebook_weight, dead_code_restart=cfg.dead_code_restart,
            restart_every=cfg.dead_code_every,
        )
        self.decoder = Decoder(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ checks

    def _check_images(self, images: Any) -> None:
        cfg = self.cfg
        expected = f"(B, {cfg.channels_in}, {cfg.image_size}, {cfg.image_size}) float in [-1, 1]"
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images: expected a torch.Tensor {expected}, got {type(images).__name__}")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images: expected a float tensor {expected}, got dtype {images.dtype} "
                             "(convert uint8 images with x.float() / 127.5 - 1)")
        if images.ndim != 4:
            raise ValueError(f"images: expected shape {expected}, got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        if b == 0:
            raise ValueError(f"images: expected a non-empty batch {expected}, got batch size 0")
        if c != cfg.channels_in:
            raise ValueError(f"images: expected {cfg.channels_in} channels {expected}, got {c} channels "
                             f"(shape {tuple(images.shape)})")
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"images: size {h}x{w} is not divisible by patch_size={cfg.patch_size}; "
                             f"expected {expected}")
        if h != cfg.image_size or w != cfg.image_size:
            raise ValueError(f"images: size {h}x{w} does not match image_size={cfg.image_size}; "
                             f"expected {expected}")
        self._check_device(images, "images")
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images: expected finite values in [-1, 1], found NaN or inf")
        if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"images: expected values in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                             "(scale uint8 images with x / 127.5 - 1)")

    def _check_device(self, x: torch.Tensor, name: str) -> None:
        device = self.encoder.class_embedding.device
        if x.device != device:
            raise ValueError(f"{name}: on device {x.device}, but the tokenizer's weights are on {device}; "
                             f"expected {name} on {device} (move them with .to({str(device)!r}))")

    def _check_tokens(self, tokens: Any) -> torch.Tensor:
        cfg = self.cfg
        expected = f"(B, {cfg.num_tokens}) int64 in [0, {cfg.codebook_size})"
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens: expected a torch.Tensor {expected}, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens: expected an integer tensor {expected}, got dtype {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[1] != cfg.num_tokens or tokens.shape[0] == 0:
            raise ValueError(f"tokens: expected shape {expected}, got shape {tuple(tokens.shape)}")
        self._check_device(tokens, "tokens")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= cfg.codebook_size:
            raise ValueError(f"tokens: expected values in [0, {cfg.codebook_size}), got values in [{lo}, {hi}]")
        return tokens.long()

    # ------------------------------------------------------------------------------------------ API

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """images (B, 3, H, W) in [-1, 1] -> (codes (B, M, D) fp32 unit with straight-through gradient,
        tokens (B, M) int64, quantizer losses and statistics)."""
        return self._quantize(images)[1:]

    def _quantize(self, images: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``quantize`` with the encoder's latents (B, M, D) before them (``forward`` needs both)."""
        self._check_images(images)
        latents = self.encoder(images)
        return (latents, *self.quantizer(latents))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) float in [-1, 1] -> tokens: (B, M) int64 in [0, C).

        For the set tokenizer the row is a multiset: its order carries no information for ``decode``.
        """
        self._check_images(images)
        return self.quantizer.codes_to_indices(self.encoder(images))

    def decode_codes(self, codes: torch.Tensor, shuffle: bool | None = None) -> torch.Tensor:
        """Unit codes (B, M, D) -> images (B, 3, H, W), unclamped (the training target space).

        ``shuffle`` (default: in training mode, for the set tokenizer) presents the tokens to the decoder in a random
        per-sample order drawn from torch's global generator. The ordered control never shuffles.
        """
        return self.decoder(self._shuffled(codes, shuffle))

    def _shuffled(self, codes: torch.Tensor, shuffle: bool | None) -> torch.Tensor:
        if shuffle is None:
            shuffle = self.training
        if shuffle and not self.cfg.ordered:
            b, m = codes.shape[:2]
            perm = torch.rand(b, m, device=codes.device).argsort(dim=1)  # (B, M) a permutation per sample
            codes = codes.gather(1, perm.unsqueeze(-1).expand(-1, -1, codes.shape[-1]))
        return codes

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, M) integer in [0, C) -> images: (B, 3, H, W) float in [-1, 1].

        The set tokenizer's output does not depend on the order of each row (up to float rounding).
        """
        tokens = self._check_tokens(tokens)
        return self.decode_codes(self.quantizer.indices_to_codes(tokens)).clamp(-1.0, 1.0)

    def decode_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """counts: (B, C) non-negative integers, each row summing to M -> images (B, 3, H, W) in [-1, 1].

        Decodes the canonical (ascending) token sequence of each count vector (``bijection.counts_to_set``).
        """
        cfg = self.cfg
        expected = f"(B, {cfg.codebook_size}) integer counts, each row summing to M={cfg.num_tokens}"
        if not isinstance(counts, torch.Tensor):
            raise ValueError(f"counts: expected a torch.Tensor {expected}, got {type(counts).__name__}")
        if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
            raise ValueError(f"counts: expected {expected}, got dtype {counts.dtype}")
        if counts.ndim != 2 or counts.shape[1] != cfg.codebook_size or counts.shape[0] == 0:
            raise ValueError(f"counts: expected shape {expected}, got shape {tuple(counts.shape)}")
        if bool((counts < 0).any()):
            raise ValueError(f"counts: expected {expected}, found negative entries")
        sums = counts.sum(dim=1)
        if bool((sums != cfg.num_tokens).any()):
            raise ValueError(f"counts: expected {expected}, got row sums {sorted(set(sums.tolist()))[:8]}")
        return self.decode(counts_to_set(counts))

    def forward(self, images: torch.Tensor, bypass_quantizer: bool = False,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: images (B, 3, H, W) in [-1, 1] -> (reconstruction (B, 3, H, W) unclamped, out).

        ``bypass_quantizer``: the decoder sees the encoder's L2-normalised outputs instead of their codes (the
        quantizer warm-up of ``TrainConfig.quantizer_warmup``); the quantizer's losses and statistics are computed
        as usual.

        out: fp32 scalars: loss = recon_loss (MSE) + quant_loss; recon_loss, quant_loss, codebook_loss,
        commitment_loss, usage, entropy (bits), perplexity (of this batch's codes). The matching arms
        (decoder_input "hungarian" / "chamfer") add match_weight * match_loss to loss and report match_loss: the
        set loss of the decoder's slot logits against this batch's tokens (``tokenset.set_decoders``).
        """
        latents, codes, tokens, q = self._quantize(images)
        if bypass_quantizer:
            codes = F.normalize(latents.float(), dim=-1)
        recon, logits = self.decoder.forward_with_logits(self._shuffled(codes, None))
        recon_loss = F.mse_loss(recon.float(), images.float())
        loss = recon_loss + q["loss"]
        out = {"recon_loss": recon_loss.detach(), "quant_loss": q["loss"].detach()}
        if logits is not None:
            match = matching_loss(self.cfg.decoder_input, logits, tokens)["loss"]
            loss = loss + self.cfg.match_weight * match
            out["match_loss"] = match.detach()
        out = {"loss": loss, **out}
        out.update({k: v for k, v in q.items() if k != "loss"})
        return recon, out

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(cls, path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu",
                        ) -> "SetTokenizer":
        """A tokenizer rebuilt from a checkpoint written by ``tokenset.train`` (its saved config), in eval mode.

        ``ema=True`` loads the EMA weights (the ones evaluations report), else the raw model weights.
        """
        from tokenset.checkpoint import load_checkpoint  # checkpoint is a leaf module; imported lazily

        state = load_checkpoint(path, map_location=map_location)
        config = state.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("tokenizer"), dict):
            raise ValueError(f"{path}: checkpoint has no tokenizer config (expected state['config']['tokenizer'])")
        cfg = from_mapping(TokenizerConfig, config["tokenizer"], where=f"{path}: config['tokenizer']")
        key = "ema" if ema else "model"
        if key not in state:
            raise ValueError(f"{path}: checkpoint has no {key!r} weights; it holds {sorted(state)}")
        model = cls(cfg)
        try:
            model.load_state_dict(state[key])
        except RuntimeError as err:
            raise ValueError(f"{path}: {key!r} weights do not fit the saved tokenizer config: {err}") from None
        return model.eval()
