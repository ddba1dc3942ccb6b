"""Official tensors -> our names, shapes and parameterisation: ``map_official_state_dict`` and its ``MappingReport``.

A pure function: official keys are renamed by ordered regular expressions (``_RENAMES``), and the tensors that need
more than a rename (the patch embedding folded from a conv on [0, 1] images into a linear map of [-1, 1] patches,
the fused q/k/v projections split, the count-embedding rows no count can read dropped) are handled by ``_special``.
What cannot be mapped is listed in the report, never silently dropped. The loaders are ``tokenset.official``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from tokenset.official_keys import Kind

__all__ = ["MappingReport", "map_official_state_dict"]


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
