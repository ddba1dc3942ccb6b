"""The generators compared on the same tokens: FSDD over count vectors, and the baselines over token sequences.

Every generator models the tokens of a frozen tokenizer and returns token rows (B, M) that the same tokenizer
decodes. They share the transformer width, depth and heads of one ``DenoiserConfig`` and the training steps of one
``TrainConfig`` (``fit_generator``, on ``tokenset.trainer.Trainer``), so the comparison is fair:

| name            | family  | tokens of             | modelled as                                          |
|-----------------|---------|-----------------------|------------------------------------------------------|
| fsdd            | FSDD    | the set tokenizer     | count vector (B, C), fixed sum M (the paper's model) |
| masked_sorted   | masked  | the set tokenizer     | canonical (ascending) sequence (B, M)                |
| masked_ordered  | masked  | the ordered control   | the encoder's sequence (B, M)                        |
| ar_sorted       | AR      | the set tokenizer     | canonical (ascending) sequence, left to right        |
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tokenset import analysis
from tokenset.baselines import autoregressive, masked
from tokenset.batches import StepSampler
from tokenset.bijection import canonical_order, counts_to_set, set_to_counts
from tokenset.atomic import sha256_file
from tokenset.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from tokenset.config import DenoiserConfig, FSDDConfig, TrainConfig, from_mapping
from tokenset.denoiser import CountDiT
from tokenset.fsdd import FSDD, fixed_sum_noise
from tokenset.images import to_uint8
from tokenset.tokenizer import SetTokenizer
from tokenset.trainer import Trainer, rank_world

__all__ = ["GeneratorSpec", "GENERATORS", "model_input", "build_generator", "GeneratorLoss", "fit_generator",
           "generate", "class_balanced_labels", "generate_images", "sample_images", "encode_cached", "fsdd_loss_by_t",
           "load_generator"]


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    name: str
    family: Literal["fsdd", "masked", "ar"]
    tokenizer: Literal["set", "ordered"]  # whose tokens it models (and decodes with)
    description: str


GENERATORS: dict[str, GeneratorSpec] = {
    "fsdd": GeneratorSpec("fsdd", "fsdd", "set", "FSDD over count vectors (TokenSet)"),
    "masked_sorted": GeneratorSpec("masked_sorted", "masked", "set",
                                   "masked discrete diffusion over the sorted set tokens"),
    "masked_ordered": GeneratorSpec("masked_ordered", "masked", "ordered",
                                    "masked discrete diffusion over the ordered control's tokens"),
    "ar_sorted": GeneratorSpec("ar_sorted", "ar", "set", "autoregressive over the sorted set tokens"),
}


def _spec(name: str) -> GeneratorSpec:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; expected one of {sorted(GENERATORS)}")
    return GENERATORS[name]


def model_input(name: str, tokens: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """What generator ``name`` models, from its tokenizer's tokens (B, M): counts (B, C) for FSDD, the canonical
    sequence for the *_sorted baselines, the tokens as they come for the ordered control."""
    spec = _spec(name)
    if spec.family == "fsdd":
        return set_to_counts(tokens, codebook_size)
    return canonical_order(tokens) if spec.tokenizer == "set" else tokens.long()


def build_generator(name: str, cfg: DenoiserConfig) -> nn.Module:
    """The network of generator ``name`` at the width/depth/heads of ``cfg`` (C = codebook_size, M = total)."""
    family = _spec(name).family
    if family == "fsdd":
        return CountDiT(cfg)
    if family == "masked":
        return masked.MaskedTokenTransformer(cfg)
    return autoregressive.ARTokenTransformer(cfg)


class GeneratorLoss:
    """``loss_fn(model, (inputs, labels)) -> {"loss": scalar, ...scalars}`` for ``tokenset.trainer.Trainer``."""

    def __init__(self, name: str, cfg: DenoiserConfig, fsdd_cfg: FSDDConfig) -> None:
        self.spec = _spec(name)
        self.fsdd = FSDD.from_config(fsdd_cfg, cfg.codebook_size, cfg.total, num_classes=cfg.num_classes)

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs, labels = batch
        if self.spec.family == "fsdd":
            out = self.fsdd.training_loss(model, inputs, labels)
        elif self.spec.family == "masked":
            out = masked.training_loss(model, inputs, labels)
        else:
            out = autoregressive.training_loss(model, inputs, labels)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}


# --------------------------------------------------------------------------------------------- training


def fit_generator(
    name: str,
    den_cfg: DenoiserConfig,
    fsdd_cfg: FSDDConfig,
    train_cfg: TrainConfig,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train generator ``name`` of ``GENERATORS`` on the tokens of its frozen tokenizer.

    tokens: (N, M) int64 in [0, C) (e.g. ``encode_cached``); labels: (N,) int64 in [0, num_classes).
    The generator sees ``model_input(name, tokens)`` (counts for FSDD, sequences for the baselines).
    The same ``tokenset.trainer.Trainer`` as the tokenizer: AdamW, warm-up + cosine, EMA, atomic resumable checkpoints
    (out_dir/checkpoint.pt) and a CSV log (out_dir/log.csv); with ``resume`` a checkpoint of the same configuration
    (the configs and the ``fingerprint`` of tokens and labels) is continued or, finished, reused; one of another
    configuration is not (the run starts over and prints what differs). Returns the last logged loss, steps, wall
    time, the resolved config and the trained EMA model ("model", in eval mode).
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] != den_cfg.total:
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens: expected (N, {den_cfg.total}) int64 codes (M = denoiser total), got {got}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (tokens.shape[0],) or labels.dtype != torch.int64:
        got = (labels.dtype, tuple(labels.shape)) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected int64 of shape ({tokens.shape[0]},), got {got}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= den_cfg.num_classes):
        raise ValueError(f"labels: expected values in [0, {den_cfg.num_classes}) (denoiser num_classes), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    inputs = model_input(name, tokens, den_cfg.codebook_size)
    config = {"generator": name, "denoiser": den_cfg.to_dict(), "fsdd": fsdd_cfg.to_dict(),
              "train": train_cfg.to_dict(), "inputs": {"tokens": fingerprint(tokens), "labels": fingerprint(labels)}}
    torch.manual_seed(train_cfg.seed)
    model = build_generator(name, den_cfg)
    rank, world = rank_world()
    if train_cfg.batch_size % world:
        raise ValueError(f"batch_size={train_cfg.batch_size} is not divisible by the {world} processes")

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in StepSampler(len(inputs), train_cfg.batch_size // world, train_cfg.seed, start, rank, world):
            yield inputs[idx], labels[idx]

    trainer = Trainer(model, train_cfg, out_dir, loss_fn=GeneratorLoss(name, den_cfg, fsdd_cfg),
                      config=config, device=device, progress=progress)
    last = trainer.fit(batches, resume=resume)
    if not last.get("loss") and trainer.log_path.is_file():  # resumed a finished run: report its last log row
        with trainer.log_path.open() as fh:
            rows = list(csv.DictReader(fh))
        last = {"loss": float(rows[-1]["loss"])} if rows else {}
    return {"loss": last.get("loss"), "steps": trainer.step, "wall_time_s": round(trainer.elapsed, 1),
            "config": config, "model": trainer.ema.eval()}


@torch.no_grad()
def generate(name: str, model: nn.Module, labels: torch.Tensor, fsdd_cfg: FSDDConfig,
             guidance: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample token rows (B, M) int64 for ``labels`` (B,) from generator ``name`` (model in eval mode).

    All families use ``fsdd_cfg.steps`` decoding steps where they have steps (AR has M), ``fsdd_cfg.top_p``
    for FSDD's x1 draws, and ``guidance`` (default ``fsdd_cfg.guidance``): on probabilities for FSDD, on logits
    for the baselines (as each family does it). FSDD's counts become the canonical sequence (counts_to_set)."""
    spec = _spec(name)
    g = fsdd_cfg.guidance if guidance is None else guidance
    model.eval()
    if spec.family == "fsdd":
        cfg = model.cfg
        process = FSDD.from_config(fsdd_cfg, cfg.codebook_size, cfg.total, num_classes=cfg.num_classes)
        counts = process.sample(model, labels, steps=fsdd_cfg.steps, top_p=fsdd_cfg.top_p, guidance=g,
                                sigma_schedule=fsdd_cfg.sigma_schedule, generator=generator)
        return counts_to_set(counts)
    if spec.family == "masked":
        return masked.sample(model, labels, steps=fsdd_cfg.steps, guidance=g, generator=generator)
    return autoregressive.sample(model, labels, guidance=g, generator=generator)


def class_balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes * per_class,) int64: ``per_class`` copies of every class, class by class (0, 0, .., 1, 1, ..)."""
    if num_classes < 1 or per_class < 1:
        raise ValueError(f"num_classes and per_class: expected at least 1 each, got {num_classes} and {per_class}")
    return torch.arange(num_classes).repeat_interleave(per_class)


def _decode_generated(name: str, model: nn.Module, tokenizer: SetTokenizer, labels: torch.Tensor,
                      fsdd_cfg: FSDDConfig, guidance: float | None, generator: torch.Generator,
                      batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    tokens = torch.cat([generate(name, model, labels[lo:lo + batch_size].to(device), fsdd_cfg, guidance=guidance,
                                 generator=generator).cpu() for lo in range(0, len(labels), batch_size)])
    return to_uint8(analysis.decode_tokens(tokenizer, tokens))


@torch.no_grad()
def generate_images(name: str, model: nn.Module, tokenizer: SetTokenizer, labels: torch.Tensor, fsdd_cfg: FSDDConfig,
                    seed: int = 0, guidance: float | None = None, batch_size: int = 256) -> torch.Tensor:
    """One generated image per label: uint8 (len(labels), 3, H, W), from ``generate`` (seeded by ``seed``) in batches
    of ``batch_size``, decoded by ``tokenizer`` (the tokenizer whose tokens generator ``name`` models).
    labels: (N,) int64 class labels, e.g. ``class_balanced_labels``."""
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or not len(labels) or labels.dtype != torch.int64:
        got = (labels.dtype, tuple(labels.shape)) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected a non-empty 1-D int64 tensor of class labels, got {got}")
    return _decode_generated(name, model, tokenizer, labels, fsdd_cfg, guidance, torch.Generator().manual_seed(seed),
                             batch_size)


@torch.no_grad()
def sample_images(name: str, model: nn.Module, tokenizer: SetTokenizer, class_freq_labels: torch.Tensor, num: int,
                  fsdd_cfg: FSDDConfig, seed: int = 0, guidance: float | None = None,
                  batch_size: int = 256) -> torch.Tensor:
    """``num`` generated images, uint8 (num, 3, H, W): labels drawn (seeded) from ``class_freq_labels`` (e.g. the
    training labels, so the classes follow their training frequencies), then as ``generate_images`` (the same
    seeded generator continues from the label draws)."""
    if num < 1:
        raise ValueError(f"num: expected at least 1 image, got {num}")
    if not isinstance(class_freq_labels, torch.Tensor) or class_freq_labels.ndim != 1 or not len(class_freq_labels):
        raise ValueError("class_freq_labels: expected a non-empty 1-D tensor of class labels")
    g = torch.Generator().manual_seed(seed)
    labels = class_freq_labels[torch.randint(len(class_freq_labels), (num,), generator=g)]
    return _decode_generated(name, model, tokenizer, labels, fsdd_cfg, guidance, g, batch_size)


def encode_cached(checkpoint: str | Path, images: torch.Tensor, cache: str | Path,
                  device: str | torch.device = "cpu", model: SetTokenizer | None = None) -> torch.Tensor:
    """Tokens (N, M) int64 of uint8 ``images`` under the tokenizer ``checkpoint`` (EMA weights), cached in
    ``cache`` together with the checkpoint's sha256 and the images' count: a changed tokenizer re-encodes.
    ``model``: that checkpoint already loaded (``SetTokenizer.from_checkpoint``), so a cold cache does not load it
    again; the cache key is still the checkpoint file's."""
    checkpoint, cache = Path(checkpoint), Path(cache)
    key: dict[str, Any] = {"checkpoint_sha256": sha256_file(checkpoint), "num_images": len(images)}
    if cache.is_file():
        state = load_checkpoint(cache)
        if state.get("key") == key:
            return state["tokens"]
    if model is None:
        model = SetTokenizer.from_checkpoint(checkpoint, map_location=device).to(device)
    tokens = analysis.encode_images(model, images)
    save_checkpoint(cache, {"key": key, "tokens": tokens})
    return tokens


@torch.no_grad()
def fsdd_loss_by_t(model: nn.Module, fsdd_cfg: FSDDConfig, counts: torch.Tensor, labels: torch.Tensor,
                   bins: int = 10, repeats: int = 1, seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """FSDD's cross-entropy per position at fixed diffusion times: for t at the centres of ``bins`` equal bins
    of [0, 1], z_t ~ q(z_t | x0, x1) (``repeats`` draws of x0 per data row), loss of ``model`` (eval mode, labels
    kept) against x1. counts: (N, C) int64 rows summing to M; labels (N,). Returns a DataFrame (t, loss)."""
    if bins < 1 or repeats < 1:
        raise ValueError(f"bins and repeats must be at least 1, got bins={bins}, repeats={repeats}")
    cfg = model.cfg
    process = FSDD.from_config(fsdd_cfg, cfg.codebook_size, cfg.total, num_classes=cfg.num_classes)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    model.eval()
    rows = []
    for t_value in ((torch.arange(bins) + 0.5) / bins).tolist():
        total, count = 0.0, 0
        for _ in range(repeats):
            for lo in range(0, len(counts), batch_size):
                x1, y = counts[lo:lo + batch_size], labels[lo:lo + batch_size]
                x0 = fixed_sum_noise(len(x1), cfg.codebook_size, cfg.total, g, fsdd_cfg.noise)
                t = torch.full((len(x1),), t_value)
                z = process.q_sample(x1, x0, t, g)
                logits = model(z.to(dev), t.to(dev), y.to(dev)).float()
                ce = F.cross_entropy(logits.reshape(-1, cfg.total + 1), x1.to(dev).reshape(-1), reduction="sum")
                total, count = total + float(ce), count + x1.numel()
        rows.append({"t": t_value, "loss": total / count})
    return pd.DataFrame(rows)


def load_generator(path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu",
                   ) -> tuple[str, nn.Module]:
    """(name, network in eval mode) from a checkpoint written by ``fit_generator``."""
    state = load_checkpoint(path, map_location=map_location)
    config = state.get("config")
    if not isinstance(config, dict) or config.get("generator") not in GENERATORS:
        raise ValueError(f"{path}: not a generator checkpoint (expected config['generator'] in {sorted(GENERATORS)})")
    name = config["generator"]
    cfg = from_mapping(DenoiserConfig, config["denoiser"], where=f"{path}: config['denoiser']")
    model = build_generator(name, cfg)
    key = "ema" if ema else "model"
    try:
        model.load_state_dict(state[key])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: {key!r} weights do not fit generator {name!r}: {str(err).splitlines()[0]}") from None
    return name, model.to(map_location).eval()
