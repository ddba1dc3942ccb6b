"""Names and shapes of the official checkpoints' tensors (``official_key_shapes``), for a model of a given size.

The official architecture at that size, written out key by key: at the paper sizes these are the released files'
keys. ``kind`` ("tokenizer" or "fsdd") names which of the two official networks.
"""

from __future__ import annotations

import math
from typing import Literal

from tokenset.config import DenoiserConfig, TokenizerConfig
from tokenset.official_modules import _Z_CHANNELS, _maskgit_mults

__all__ = ["Kind", "official_key_shapes"]

Kind = Literal["tokenizer", "fsdd"]


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
