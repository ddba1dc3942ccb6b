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

This module reads the files and loads them; the parts, re-exported here, are ``tokenset.official_mapping`` (the
mapping and its report), ``tokenset.official_keys`` (the official key / shape tables) and
``tokenset.official_modules`` (the adapter modules of the list below).

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
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tokenset.checkpoint import CheckpointError
from tokenset.config import DenoiserConfig, TokenizerConfig
from tokenset.denoiser import CountDiT
from tokenset.official_keys import Kind, official_key_shapes
from tokenset.official_mapping import MappingReport, _strip_prefix, map_official_state_dict
from tokenset.official_modules import OfficialPixelHead, ScrambledTokenProjection, adapt_tokenizer
from tokenset.tokenizer import SetTokenizer

__all__ = ["OfficialCheckpointError", "MappingReport", "map_official_state_dict", "official_key_shapes",
           "load_official_tokenizer", "load_official_fsdd", "read_official_file", "ScrambledTokenProjection",
           "OfficialPixelHead", "adapt_tokenizer"]


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint does not fit the module it is loaded into; the message holds the mapping report."""


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
