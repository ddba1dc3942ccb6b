"""The official TokenSet checkpoints (github.com/Gengzigang/TokenSet) loaded into this library's modules.

The authors released three files (Google Drive, see their README; nothing here downloads anything):

| file                        | what                                   | loader                                   |
|-----------------------------|----------------------------------------|------------------------------------------|
| set_tokenizer_128_4096.pth  | set tokenizer, M = 128, C = 4096, D=12 | ``load_official_tokenizer(path)``        |
| fsdd_small_128_4096.pth     | FSDD generator, DiT1D-S (depth 12/384) | ``load_official_fsdd(path, "S")``        |
| fsdd_base_128_4096.pth      | FSDD generator, DiT1D-B (depth 12/768) | ``load_official_fsdd(path, "B")``        |

Both loaders rest on the pure function ``map_official_state_dict(state, kind, cfg) -> (our_state, report)``, which
renames, reshapes and (where the computations are provably the same) re-parameterises every official tensor and
lists in ``report`` what could not be mapped: official keys left over (``unexpected``), our keys with no source
(``missing``), and shape mismatches (``mismatched``). ``report.ok`` is True when nothing is left over, missing or
mismatched; the loaders raise ``OfficialCheckpointError`` (a ValueError) with the report otherwise.

Where the official computation differs from ours (facts read from the official code, not copied):

* Tokenizer encoder: the official patch embedding is a stride-p convolution on images mapped to [0, 1]
  (``x * 0.5 + 0.5``); ours is a linear map of (p q c)-flattened patches of images in [-1, 1]. The two are the same
  affine map: weight ``W_conv.permute(0, 2, 3, 1).flatten(1) / 2``, bias ``b + W_conv.sum((1, 2, 3)) / 2``.
* Tokenizer encoder read-out: the official (TiTok) code reshapes the (B, M, W) latent outputs to (B, W, M, 1)
  WITHOUT a transpose before its 1x1 convolution, so each output token mixes features of many latent tokens. No
  per-token linear map (ours: ``encoder.to_token``) computes that. ``load_official_tokenizer`` therefore swaps in
  ``ScrambledTokenProjection`` (same parameter names and shapes as the Linear), which reproduces it exactly.
* Tokenizer pixel decoder: the official decoder ends in a 1x1-conv/tanh "ffn" to 256 channels and MaskGIT-VQGAN's
  decoder (bias-free convolutions, GroupNorm eps 1e-6, residual blocks before each upsampling, a shortcut
  convolution applied to the block's output), output in [0, 1]. Our ``VQGANHead`` is a different network, so
  ``load_official_tokenizer`` swaps ``decoder.head`` for ``OfficialPixelHead``, a re-implementation of that layout
  (output mapped to [-1, 1]); its keys are ``decoder.head.ffn.*`` and ``decoder.head.pixel.*``.
* CountDiT: the official count embedding has C + 1 rows although counts only reach M; rows M + 1 .. C are never
  read and are dropped (listed in ``report.notes``). The official timestep embedder sees t in [0, 1] unscaled;
  ours multiplies by 1000, so ``load_official_fsdd`` sets ``t_embed.scale = 1``.
* Sampling (not weights): the official sampler's defaults differ from ours (a guidance interval "4_50_55" over
  thirds of t, "sigmoid100_0.8", x1 sum enforced only from t >= 0.65); see README "Official checkpoints".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.checkpoint import CheckpointError
from tokenset.config import DenoiserConfig, TokenizerConfig
from tokenset.denoiser import CountDiT
from tokenset.tokenizer import SetTokenizer

__all__ = ["OfficialCheckpointError", "MappingReport", "map_official_state_dict", "official_key_shapes",
           "load_official_tokenizer", "load_official_fsdd", "read_official_file", "ScrambledTokenProjection",
           "OfficialPixelHead", "adapt_tokenizer"]

Kind = Literal["tokenizer", "fsdd"]
_MASKGIT_MULTS = (1, 1, 2, 2, 4)  # MaskGIT-VQGAN's channel multipliers (the official decoder's)
_Z_CHANNELS = 256  # channels between the official decoder's ffn and its pixel decoder


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint does not fit the module it is loaded into; the message holds the mapping report."""


@dataclasses.dataclass
class MappingReport:
    """What ``map_official_state_dict`` did: keys it could not use, keys it could not fill, shape mismatches."""

    kind: str
    mapped: int = 0  # our keys filled from official tensors
    unexpected: list[str] = dataclasses.field(default_factory=list)  # official keys with no place in our model
    missing: list[str] = dataclasses.field(default_factory=list)  # our keys that no official key fills
    mismatched: list[str] = dataclasses.field(default_factory=list)  # "official key (shape) -> our key: why"
    notes: list[str] = dataclasses.field(default_factory=list)  # exact re-parameterisations and dropped rows

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.mismatched)

    def __str__(self) -> str:
        lines = [f"official {self.kind} checkpoint: {self.mapped} tensors mapped"]
        for title, items in (("shape mismatches", self.mismatched), ("missing (our keys with no official tensor)",
                             self.missing), ("unexpected (official keys not mapped)", self.unexpected)):
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                lines.append(f"  {title}: {len(items)}\n    {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- adapter modules


class ScrambledTokenProjection(nn.Module):
    """The official encoder's read-out: latents (B, M, W) reshaped (not transposed) to (B, W, M), then a 1x1
    convolution W -> D per column: returns (B, M, D). Parameters ``weight`` (D, W) and ``bias`` (D,), named and
    shaped like the ``nn.Linear`` it replaces."""

    def __init__(self, width: int, token_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(token_dim, width))
        self.bias = nn.Parameter(torch.zeros(token_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, w = x.shape
        scrambled = x.reshape(b, w, m)  # what the official code does; deliberately not x.transpose(1, 2)
        return torch.einsum("dw,bwm->bmd", self.weight, scrambled) + self.bias


class _MaskGitResBlock(nn.Module):
    """GroupNorm(32, eps 1e-6) -> SiLU -> 3x3 conv (no bias), twice; when the width changes the shortcut is a 1x1
    conv of the block's OUTPUT (the official layout), else the identity of its input."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(32, c_out, eps=1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class _MaskGitUp(nn.Module):
    def __init__(self, c_in: int, c_out: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([_MaskGitResBlock(c_in, c_out), _MaskGitResBlock(c_out, c_out)])
        self.upsample_conv = nn.Conv2d(c_out, c_out, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class _MaskGitDecoder(nn.Module):
    """MaskGIT-VQGAN's decoder: z (B, 256, g, g) -> pixels (B, 3, g * 2^(L-1), ...) in [0, 1] (unclamped)."""

    def __init__(self, hidden: int, mults: tuple[int, ...], channels: int) -> None:
        super().__init__()
        top = hidden * mults[-1]
        self.conv_in = nn.Conv2d(_Z_CHANNELS, top, 3, padding=1)
        self.mid = nn.ModuleList([_MaskGitResBlock(top, top), _MaskGitResBlock(top, top)])
        n = len(mults)
        self.up = nn.ModuleList(
            _MaskGitUp(hidden * mults[min(i + 1, n - 1)], hidden * mults[i], upsample=i != 0) for i in range(n))
        self.norm_out = nn.GroupNorm(32, hidden * mults[0], eps=1e-6)
        self.conv_out = nn.Conv2d(hidden * mults[0], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for blk in reversed(self.up):  # coarsest level first
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class OfficialPixelHead(nn.Module):
    """The official decoder's pixel path, as a drop-in ``decoder.head``: grid features (B, N, W) -> (B, W, g, g)
    -> ffn (1x1 conv W -> 2W, tanh, 1x1 conv 2W -> 256) -> MaskGIT-VQGAN decoder -> [0, 1] -> 2x - 1 (B, 3, H, W).

    ``hidden`` must be a multiple of 32 (GroupNorm with 32 groups); log2(patch) upsamplings."""

    def __init__(self, width: int, patch: int, grid: int, channels: int, hidden: int) -> None:
        super().__init__()
        ups = int(round(math.log2(patch)))
        if 2 ** ups != patch or ups < 1:
            raise ValueError(f"OfficialPixelHead: patch_size must be a power of two >= 2, got {patch}")
        if hidden % 32:
            raise ValueError(f"OfficialPixelHead: head_channels must be a multiple of 32 (GroupNorm), got {hidden}")
        self.grid = grid
        self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.Tanh(), nn.Conv2d(2 * width, _Z_CHANNELS, 1))
        self.pixel = _MaskGitDecoder(hidden, _maskgit_mults(ups), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        x = x.transpose(1, 2).reshape(b, w, self.grid, self.grid)
        return 2.0 * self.pixel(self.ffn(x)) - 1.0


def _maskgit_mults(ups: int) -> tuple[int, ...]:
    return _MASKGIT_MULTS[-(ups + 1):] if ups + 1 <= len(_MASKGIT_MULTS) else (1,) * (ups + 1 - 5) + _MASKGIT_MULTS


def adapt_tokenizer(model: SetTokenizer) -> SetTokenizer:
    """Swap the two parts of ``model`` whose official counterparts compute something else (see module docstring):
    ``encoder.to_token`` -> ScrambledTokenProjection, ``decoder.head`` -> OfficialPixelHead. In place; returns it."""
    cfg = model.cfg
    if cfg.ordered or cfg.decoder_input != "set":
        raise ValueError(f"official tokenizer weights need ordered=False and decoder_input='set', got "
                         f"ordered={cfg.ordered}, decoder_input={cfg.decoder_input!r}")
    model.encoder.to_token = ScrambledTokenProjection(cfg.width, cfg.token_dim)
    model.decoder.head = OfficialPixelHead(cfg.decoder_width, cfg.patch_size, cfg.grid, cfg.channels_in,
                                           cfg.head_channels)
    return model


# --------------------------------------------------------------------------------------------- name templates


def _vit_block_shapes(prefix: str, w: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (mlp, w), f"{prefix}.mlp.c_fc.bias": (mlp,),
            f"{prefix}.mlp.c_proj.weight": (w, mlp), f"{prefix}.mlp.c_proj.bias": (w,)}


def _resblock_shapes(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.norm1.weight": (c_in,), f"{prefix}.norm1.bias": (c_in,), f"{prefix}.conv1.weight":
           (c_out, c_in, 3, 3), f"{prefix}.norm2.weight": (c_out,), f"{prefix}.norm2.bias": (c_out,),
           f"{prefix}.conv2.weight": (c_out, c_out, 3, 3)}
    if c_in != c_out:
        out[f"{prefix}.nin_shortcut.weight"] = (c_out, c_out, 1, 1)
    return out


def official_key_shapes(kind: Kind, cfg: TokenizerConfig | DenoiserConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official checkpoint's tensors for a model of ``cfg`` (the official architecture at
    that size; at the paper sizes these are the released files' keys). kind "tokenizer": TokenizerConfig;
    kind "fsdd": DenoiserConfig (official count table: C + 1 rows)."""
    if kind == "tokenizer":
        if not isinstance(cfg, TokenizerConfig):
            raise ValueError(f"kind 'tokenizer' needs a TokenizerConfig, got {type(cfg).__name__}")
        w, wd, p, n = cfg.width, cfg.decoder_width, cfg.patch_size, cfg.grid ** 2
        s: dict[str, tuple[int, ...]] = {"latent_tokens": (cfg.num_tokens, w),
                                         "quantize.embedding.weight": (cfg.codebook_size, cfg.token_dim)}
        s.update({"encoder.patch_embed.weight": (w, cfg.channels_in, p, p), "encoder.patch_embed.bias": (w,),
                  "encoder.class_embedding": (1, w), "encoder.positional_embedding": (n + 1, w),
                  "encoder.ln_pre.weight": (w,), "encoder.ln_pre.bias": (w,), "encoder.ln_post.weight": (w,),
                  "encoder.ln_post.bias": (w,), "encoder.conv_out.weight": (cfg.token_dim, w, 1, 1),
                  "encoder.conv_out.bias": (cfg.token_dim,)})
        for i in range(cfg.depth):
            s.update(_vit_block_shapes(f"encoder.transformer.{i}", w, int(w * cfg.mlp_ratio)))
        s.update({"decoder.decoder_embed.weight": (wd, cfg.token_dim), "decoder.decoder_embed.bias": (wd,),
                  "decoder.class_embedding": (1, wd), "decoder.positional_embedding": (n + 1, wd),
                  "decoder.mask_token": (1, 1, wd), "decoder.ln_pre.weight": (wd,), "decoder.ln_pre.bias": (wd,),
                  "decoder.ln_post.weight": (wd,), "decoder.ln_post.bias": (wd,),
                  "decoder.ffn.0.weight": (2 * wd, wd, 1, 1), "decoder.ffn.0.bias": (2 * wd,),
                  "decoder.ffn.2.weight": (_Z_CHANNELS, 2 * wd, 1, 1), "decoder.ffn.2.bias": (_Z_CHANNELS,)})
        for i in range(cfg.decoder_depth):
            s.update(_vit_block_shapes(f"decoder.transformer.{i}", wd, int(wd * cfg.mlp_ratio)))
        h, mults = cfg.head_channels, _maskgit_mults(int(round(math.log2(p))))
        top = h * mults[-1]
        s.update({"pixel_decoder.conv_in.weight": (top, _Z_CHANNELS, 3, 3), "pixel_decoder.conv_in.bias": (top,)})
        for j in range(2):
            s.update(_resblock_shapes(f"pixel_decoder.mid.{j}", top, top))
        for i in range(len(mults)):
            c_in, c_out = h * mults[min(i + 1, len(mults) - 1)], h * mults[i]
            s.update(_resblock_shapes(f"pixel_decoder.up.{i}.block.0", c_in, c_out))
            s.update(_resblock_shapes(f"pixel_decoder.up.{i}.block.1", c_out, c_out))
            if i != 0:
                s[f"pixel_decoder.up.{i}.upsample_conv.weight"] = (c_out, c_out, 3, 3)
                s[f"pixel_decoder.up.{i}.upsample_conv.bias"] = (c_out,)
        s.update({"pixel_decoder.norm_out.weight": (h * mults[0],), "pixel_decoder.norm_out.bias": (h * mults[0],),
                  "pixel_decoder.conv_out.weight": (cfg.channels_in, h * mults[0], 3, 3),
                  "pixel_decoder.conv_out.bias": (cfg.channels_in,)})
        return s
    if kind == "fsdd":
        if not isinstance(cfg, DenoiserConfig):
            raise ValueError(f"kind 'fsdd' needs a DenoiserConfig, got {type(cfg).__name__}")
        d, c, m, hid = cfg.width, cfg.codebook_size, cfg.total, int(cfg.width * cfg.mlp_ratio)
        s = {"x_embedder.embedding_table.weight": (c + 1, d), "pos_embed": (1, c, d),
             "t_embedder.mlp.0.weight": (d, cfg.time_freq_dim), "t_embedder.mlp.0.bias": (d,),
             "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
             "y_embedder.embedding_table.weight": (cfg.num_classes + 1, d),
             "final_layer.linear.weight": (m + 1, d), "final_layer.linear.bias": (m + 1,),
             "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,)}
        for i in range(cfg.depth):
            b = f"blocks.{i}"
            s.update({f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,),
                      f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
                      f"{b}.mlp.fc1.weight": (hid, d), f"{b}.mlp.fc1.bias": (hid,),
                      f"{b}.mlp.fc2.weight": (d, hid), f"{b}.mlp.fc2.bias": (d,),
                      f"{b}.adaLN_modulation.1.weight": (6 * d, d), f"{b}.adaLN_modulation.1.bias": (6 * d,)})
        return s
    raise ValueError(f"kind: expected 'tokenizer' or 'fsdd', got {kind!r}")


# --------------------------------------------------------------------------------------------- the mapping

_RENAMES: dict[str, list[tuple[str, str]]] = {  # (official regex, our template); applied in order, first match wins
    "tokenizer": [
        (r"latent_tokens", "encoder.latent_tokens"),
        (r"quantize\.embedding\.weight", "quantizer.codebook"),
        (r"encoder\.conv_out\.(weight|bias)", r"encoder.to_token.\1"),
        (r"(encoder|decoder)\.ln_pre\.(weight|bias)", r"\1.transformer.norm_pre.\2"),
        (r"(encoder|decoder)\.ln_post\.(weight|bias)", r"\1.transformer.norm_post.\2"),
        (r"(encoder|decoder)\.(class_embedding|positional_embedding|mask_token)", r"\1.\2"),
        (r"(encoder|decoder)\.transformer\.(\d+)\.ln_1\.(weight|bias)", r"\1.transformer.blocks.\2.norm1.\3"),
        (r"(encoder|decoder)\.transformer\.(\d+)\.ln_2\.(weight|bias)", r"\1.transformer.blocks.\2.norm2.\3"),
        (r"(encoder|decoder)\.transformer\.(\d+)\.attn\.out_proj\.(weight|bias)",
         r"\1.transformer.blocks.\2.attn.proj.\3"),
        (r"(encoder|decoder)\.transformer\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"\1.transformer.blocks.\2.mlp.0.\3"),
        (r"(encoder|decoder)\.transformer\.(\d+)\.mlp\.c_proj\.(weight|bias)",
         r"\1.transformer.blocks.\2.mlp.2.\3"),
        (r"decoder\.decoder_embed\.(weight|bias)", r"decoder.token_embed.\1"),
        (r"decoder\.ffn\.(\d)\.(weight|bias)", r"decoder.head.ffn.\1.\2"),
        (r"pixel_decoder\.(.+)", r"decoder.head.pixel.\1"),
    ],
    "fsdd": [
        (r"pos_embed", "pos_embed"),
        (r"t_embedder\.mlp\.(\d)\.(weight|bias)", r"t_embed.mlp.\1.\2"),
        (r"y_embedder\.embedding_table\.weight", "y_embed.table.weight"),
        (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
        (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
        (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.mlp.2.\2"),
        (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.adaLN.1.\2"),
        (r"final_layer\.linear\.(weight|bias)", r"final.linear.\1"),
        (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final.adaLN.1.\1"),
    ],
}


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a DDP ``module.`` prefix shared by every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def map_official_state_dict(state: dict[str, Any], kind: Kind, target: dict[str, torch.Tensor],
                            ) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Official tensors -> our names, shapes and parameterisation (pure: ``state`` and ``target`` are not changed).

    state: the official state dict (tokenizer: the whole file; fsdd: its "ema" entry); kind: "tokenizer" (into an
    ``adapt_tokenizer``-ed SetTokenizer) or "fsdd" (into a CountDiT); target: our model's ``state_dict()``, which
    gives the expected keys and shapes (its tensors fill buffers with no official counterpart, e.g. the
    quantizer's dead-code statistics). Returns (our_state holding every key of ``target``, report). A tensor whose
    shape does not fit is listed in ``report.mismatched`` and ``target``'s tensor is kept in its place.
    """
    if kind not in _RENAMES:
        raise ValueError(f"kind: expected 'tokenizer' or 'fsdd', got {kind!r}")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"state: expected a dict of str -> tensor, got {type(state).__name__}")
    state = _strip_prefix(state)
    report = MappingReport(kind)
    out: dict[str, torch.Tensor] = {}
    filled: set[str] = set()

    def put(src: str, dst: str, value: torch.Tensor) -> None:
        if dst not in target:
            report.unexpected.append(f"{src} {tuple(value.shape)} (would be {dst}, which our model does not have)")
            return
        want = tuple(target[dst].shape)
        if tuple(value.shape) != want:
            report.mismatched.append(f"{src} {tuple(state[src].shape)} -> {dst}: expected {want}, "
                                     f"got {tuple(value.shape)} after mapping")
            return
        out[dst] = value.detach().to(target[dst].dtype).clone()
        filled.add(dst)

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.unexpected.append(f"{key} (a {type(value).__name__}, not a tensor)")
            continue
        special = _special(kind, key, value, state, target, report)
        if special is not None:
            for dst, v in special:
                put(key, dst, v)
            continue
        for pattern, template in _RENAMES[kind]:
            match = re.fullmatch(pattern, key)
            if match:
                dst = match.expand(template)
                put(key, dst, value)
                break
        else:
            report.unexpected.append(f"{key} {tuple(value.shape)}")
    for key, value in target.items():
        if key in filled:
            continue
        out[key] = value.detach().clone()
        if not _is_buffer_only(kind, key):
            report.missing.append(f"{key} {tuple(value.shape)}")
    report.mapped = len(filled)
    return out, report


def _is_buffer_only(kind: str, key: str) -> bool:
    """Our keys with no official counterpart that are statistics, not weights (kept at their initial values)."""
    return kind == "tokenizer" and key.startswith("quantizer.") and key != "quantizer.codebook"


def _special(kind: str, key: str, value: torch.Tensor, state: dict[str, Any], target: dict[str, torch.Tensor],
             report: MappingReport) -> list[tuple[str, torch.Tensor]] | None:
    """Tensors that need more than a rename; None for the rest."""
    if kind == "tokenizer":
        if key == "encoder.patch_embed.weight":
            if value.ndim != 4:
                report.mismatched.append(f"{key} {tuple(value.shape)}: expected a conv weight (W, 3, p, p)")
                return []
            report.notes.append("patch_embed: stride-p conv on [0, 1] images folded into a linear map of "
                                "(p q c) patches of [-1, 1] images (weight / 2)")
            return [("encoder.patch_embed.weight", value.permute(0, 2, 3, 1).reshape(value.shape[0], -1) / 2)]
        if key == "encoder.patch_embed.bias":
            weight = state.get("encoder.patch_embed.weight")
            if weight is None or weight.ndim != 4 or weight.shape[0] != value.shape[0]:
                report.mismatched.append(f"{key} {tuple(value.shape)}: needs encoder.patch_embed.weight of "
                                         "shape (W, 3, p, p) with the same W to fold the [0, 1] input scaling")
                return []
            return [("encoder.patch_embed.bias", value + weight.sum(dim=(1, 2, 3)) / 2)]
        m = re.fullmatch(r"(encoder|decoder)\.transformer\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        if m:
            part, i, what = m.groups()
            width = value.shape[0] // 3
            if value.shape[0] % 3:
                report.mismatched.append(f"{key} {tuple(value.shape)}: expected 3 * width rows (q, k, v)")
                return []
            base = f"{part}.transformer.blocks.{i}.attn"
            return [(f"{base}.q.{what}", value[:width]), (f"{base}.kv.{what}", value[width:])]
        if key == "encoder.conv_out.weight" and value.ndim == 4:
            return [("encoder.to_token.weight", value.flatten(1))]
        if key.startswith(("encoder.class_embedding", "decoder.class_embedding", "encoder.positional_embedding",
                           "decoder.positional_embedding")) or key == "latent_tokens":
            dst = "encoder.latent_tokens" if key == "latent_tokens" else key
            return [(dst, value.unsqueeze(0) if value.ndim == 2 else value)]
        return None
    if key == "x_embedder.embedding_table.weight":
        rows = target["count_embed.weight"].shape[0]
        if value.ndim != 2 or value.shape[0] < rows:
            report.mismatched.append(f"{key} {tuple(value.shape)} -> count_embed.weight: expected at least "
                                     f"M + 1 = {rows} rows of the width {target['count_embed.weight'].shape[1]}")
            return []
        if value.shape[0] > rows:
            report.notes.append(f"count embedding: kept rows 0..{rows - 1} (counts 0..M) of {value.shape[0]}; "
                                f"rows {rows}..{value.shape[0] - 1} can never be read")
        return [("count_embed.weight", value[:rows])]
    return None


# --------------------------------------------------------------------------------------------- files and loaders


def read_official_file(path: str | Path) -> dict[str, Any]:
    """The dict stored in an official .pth file, read with ``torch.load(weights_only=True)``: tensors and plain
    containers only, plus ``argparse.Namespace`` (the "args" entry of the official training checkpoints), so no
    pickled code can run. FileNotFoundError if missing; CheckpointError if corrupt, unsafe or not a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist (download it from the official "
                                "TokenSet release; nothing is downloaded at run time)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"official checkpoint {path} is truncated or corrupt (not a torch.save zip archive)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"official checkpoint {path} was refused: it holds objects other than tensors, "
                              f"plain containers and argparse.Namespace: {str(err).strip().splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"official checkpoint {path} is truncated or corrupt ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"official checkpoint {path} holds a {type(state).__name__}; expected a dict")
    return state


def _weights(state: dict[str, Any], path: Path, prefer: tuple[str, ...]) -> dict[str, Any]:
    """The state dict inside an official file: the first of ``prefer`` present, else the file itself."""
    for key in prefer:
        if isinstance(state.get(key), dict):
            return state[key]
    if any(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise OfficialCheckpointError(f"{path}: no weights found; expected one of {list(prefer)} or a state dict, "
                                  f"found keys {sorted(state)[:10]}")


def _load_into(model: nn.Module, state: dict[str, Any], kind: Kind, path: Path, strict: bool) -> MappingReport:
    ours, report = map_official_state_dict(state, kind, model.state_dict())
    if strict and not report.ok:
        raise OfficialCheckpointError(f"{path} does not fit the {kind} model:\n{report}")
    model.load_state_dict(ours)
    return report


def load_official_tokenizer(path: str | Path, cfg: TokenizerConfig | None = None, strict: bool = True,
                            ) -> tuple[SetTokenizer, MappingReport]:
    """A SetTokenizer (eval mode, ``adapt_tokenizer``-ed) holding the official tokenizer weights, and the report.

    cfg: default the ``paper`` preset with num_tokens / codebook_size / token_dim read from the file (M = 128,
    C = 4096, D = 12 for set_tokenizer_128_4096.pth). strict: raise OfficialCheckpointError (with the report) unless
    every tensor maps; strict=False loads what maps and returns the report. Input images (B, 3, 256, 256) in
    [-1, 1] (the official centre crop: ``tokenset.data.adm_center_crop``).
    """
    path = Path(path)
    state = _strip_prefix(_weights(read_official_file(path), path, ("state_dict", "model")))
    if cfg is None:
        lat, emb = state.get("latent_tokens"), state.get("quantize.embedding.weight")
        if not (isinstance(lat, torch.Tensor) and lat.ndim == 2 and isinstance(emb, torch.Tensor) and emb.ndim == 2):
            raise OfficialCheckpointError(f"{path}: not an official tokenizer checkpoint (expected 'latent_tokens' "
                                          f"(M, W) and 'quantize.embedding.weight' (C, D); keys {sorted(state)[:8]})")
        cfg = TokenizerConfig.preset("paper", num_tokens=int(lat.shape[0]), codebook_size=int(emb.shape[0]),
                                     token_dim=int(emb.shape[1]))
    model = adapt_tokenizer(SetTokenizer(cfg))
    report = _load_into(model, state, "tokenizer", path, strict)
    return model.eval(), report


def load_official_fsdd(path: str | Path, size: Literal["S", "B"] | DenoiserConfig = "S", codebook_size: int = 4096,
                       total: int = 128, strict: bool = True, ema: bool = True) -> tuple[CountDiT, MappingReport]:
    """A CountDiT (eval mode) holding an official FSDD generator (DiT1D-S or DiT1D-B), and the report.

    size: "S" (fsdd_small_128_4096.pth) or "B" (fsdd_base_128_4096.pth), or a DenoiserConfig; codebook_size,
    total: C and M of the tokenizer (4096, 128). ema: the file's "ema" weights (what the official sampler uses),
    else "model". The timestep embedder is set to read t in [0, 1] unscaled, as the official network does.
    """
    path = Path(path)
    if isinstance(size, DenoiserConfig):
        cfg = size
    elif size in ("S", "B"):
        cfg = DenoiserConfig.preset(size, codebook_size=codebook_size, total=total)
    else:
        raise ValueError(f"size: expected 'S', 'B' or a DenoiserConfig, got {size!r}")
    state = _weights(read_official_file(path), path, ("ema", "model") if ema else ("model",))
    model = CountDiT(cfg)
    model.t_embed.scale = 1.0  # the official TimestepEmbedder reads t in [0, 1]
    report = _load_into(model, state, "fsdd", path, strict)
    report.notes.append("t_embed.scale set to 1 (official timesteps are t in [0, 1], ours are 1000 t)")
    return model.eval(), report
