"""The tokenizer's training recipe (``fit_tokenizer``) and its command line, ``python -m tokenset.train``.

``fit_tokenizer`` trains ``SetTokenizer`` on images: stage 1 (L2 + quantizer losses, all weights) and, if
``train_cfg.disc_steps > 0``, stage 2 (decoder only, L2 + a hinge patch-discriminator loss, as in the paper's
recipe). It writes ``out_dir/checkpoint.pt``, ``out_dir/log.csv`` and ``out_dir/loss_curve.png`` and returns the
final validation metrics of the EMA weights (``evaluate_tokenizer``). ``reuse_tokenizer_run`` seeds a run's folder
with an identical finished run; ``plot_log`` draws a training log.

The parts it is built from, each its own module, are re-exported here: the optimisation loop ``Trainer`` (with
``WarmupCosine`` and ``rank_world``; ``tokenset.trainer``), the image batches ``image_batches`` / ``StepSampler``
(``tokenset.batches``) and stage 2, ``DecoderGanTrainer`` / ``PatchDiscriminator`` (``tokenset.decoder_gan``).

Images are passed as uint8 tensors (N, 3, H, W) in [0, 255] (``tokenset.data.load_arrays``), the fast path for data
that fits in memory; a ``torch.utils.data.Dataset`` yielding ``(uint8 image (3, H, W), label)`` (e.g.
``tokenset.data.load_dataset(cfg, split)`` for an ImageFolder) is read through a DataLoader instead.

``python -m tokenset.train --params params.yaml --out results/tokenizer`` runs ``fit_tokenizer`` from the
``data``/``tokenizer``/``train`` sections; under ``torchrun`` it initialises the process group itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from tokenset import atomic
from tokenset.batches import StepSampler, image_batches
from tokenset.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.decoder_gan import DecoderGanTrainer, PatchDiscriminator
from tokenset.images import psnr, to_float, to_uint8
from tokenset.quantizer import code_statistics
from tokenset.tokenizer import SetTokenizer
from tokenset.trainer import Trainer, WarmupCosine, _CsvLog, rank_world  # noqa: F401  (_CsvLog: kept importable here)

__all__ = ["Trainer", "WarmupCosine", "StepSampler", "PatchDiscriminator", "DecoderGanTrainer", "fit_tokenizer",
           "reuse_tokenizer_run", "evaluate_tokenizer", "image_batches", "rank_world", "plot_log", "main"]


def _check_images_arg(images: Any, name: str, size: int) -> None:
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{name}: expected uint8 images (N, 3, {size}, {size}), "
                             f"got {images.dtype} of shape {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"{name}: expected images of {size}x{size} (tokenizer image_size), "
                             f"got {images.shape[2]}x{images.shape[3]}")
        if images.shape[0] == 0:
            raise ValueError(f"{name}: no images")
    elif not isinstance(images, Dataset):
        raise ValueError(f"{name}: expected a uint8 tensor (N, 3, H, W) or a torch Dataset of (uint8 image, label), "
                         f"got {type(images).__name__}")


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_tokenizer(model: SetTokenizer, images: torch.Tensor | Dataset, batch_size: int = 256,
                       limit: int = 0, device: str | torch.device | None = None) -> dict[str, float]:
    """Validation metrics of ``model`` on uint8 images: mean per-image PSNR (dB; ``tokenset.images.psnr`` of the
    reconstruction quantised by ``to_uint8``, the definition the tables use), and statistics of the validation
    tokens: codebook usage (fraction of codes used by the whole set), entropy (bits) and perplexity of the code
    histogram, distinct codes per image, largest repeat count of one code in an image (means)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n = len(images) if limit <= 0 else min(limit, len(images))
    counts = torch.zeros(model.cfg.codebook_size, dtype=torch.float64)
    psnrs, distinct, repeat = [], [], []
    for lo in range(0, n, batch_size):
        if isinstance(images, torch.Tensor):
            batch = images[lo:lo + batch_size][: n - lo]
        else:
            batch = torch.stack([images[i][0] for i in range(lo, min(lo + batch_size, n))])
        x = to_float(batch).to(device)
        tokens = model.encode(x)
        recon = model.decode(tokens)
        psnrs.append(psnr(to_uint8(recon), batch, reduction="none"))  # (B,) float64, on uint8 as the tables
        per_image = torch.zeros(tokens.shape[0], model.cfg.codebook_size, dtype=torch.int64, device=tokens.device)
        per_image.scatter_add_(1, tokens, torch.ones_like(tokens))
        counts += per_image.sum(0).double().cpu()
        distinct.append((per_image > 0).sum(1).float().cpu())
        repeat.append(per_image.max(1).values.float().cpu())
    model.train(was_training)
    stats = code_statistics(counts)
    return {"val_psnr": float(torch.cat(psnrs).mean()), "val_usage": float(stats["usage"]),
            "val_entropy": float(stats["entropy"]), "val_perplexity": float(stats["perplexity"]),
            "val_distinct": float(torch.cat(distinct).mean()), "val_max_repeat": float(torch.cat(repeat).mean())}



_DecoderGanTrainer = DecoderGanTrainer  # the name fit_tokenizer's body uses (kept: this change only renames)


# --------------------------------------------------------------------------------------------- the recipe


def _tokenizer_loss(model: nn.Module, images: torch.Tensor, bypass_quantizer: bool = False,
                    ) -> dict[str, torch.Tensor]:
    _, out = model(images, bypass_quantizer=bypass_quantizer)
    return out


class _TokenizerLoss:
    """The tokenizer's training loss; the decoder sees unquantised latents for the first ``warmup_steps`` steps."""

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps, self.step = warmup_steps, 0

    def at_step(self, step: int) -> None:
        self.step = step

    def __call__(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return _tokenizer_loss(model, images, bypass_quantizer=self.step < self.warmup_steps)


def reuse_tokenizer_run(source_dir: str | Path, out_dir: str | Path, tok_cfg: TokenizerConfig,
                        train_cfg: TrainConfig) -> bool:
    """Seed ``out_dir`` with the finished ``fit_tokenizer`` run in ``source_dir`` if it is the same run.

    The same run = its checkpoint stores exactly this tokenizer and train configuration (the seed included; on CPU
    training is deterministic, so training again would give the same weights) and reached its last step. Then
    checkpoint.pt and log.csv are copied (atomically), unless out_dir already holds that finished run (copied by an
    earlier call); a checkpoint of another run in out_dir is replaced. ``fit_tokenizer(tok_cfg, train_cfg, ...,
    out_dir)`` then returns that run's metrics without training if it also gets the same images (it compares the
    inputs' fingerprints and trains from scratch otherwise). Returns True if out_dir now holds the reused run, False
    if there was nothing to reuse (a missing, different or unfinished run).
    """
    source, out = Path(source_dir) / "checkpoint.pt", Path(out_dir) / "checkpoint.pt"
    if not source.is_file():
        return False
    wanted = {"tokenizer": tok_cfg.to_dict(), "train": train_cfg.to_dict()}
    last_step = train_cfg.steps + train_cfg.disc_steps

    def finished_run(state: dict[str, Any]) -> bool:
        saved = state.get("config")
        return isinstance(saved, dict) and {k: saved.get(k) for k in wanted} == wanted \
            and int(state.get("step", -1)) == last_step

    state = load_checkpoint(source)
    if not finished_run(state):
        return False
    if out.is_file():
        there = load_checkpoint(out)
        if there.get("config") == state.get("config") and int(there.get("step", -1)) == last_step:
            return True
    log = Path(source_dir) / "log.csv"
    if log.is_file():
        atomic.write_bytes(out.parent / "log.csv", log.read_bytes())
    save_checkpoint(out, state)
    return True


def fit_tokenizer(
    tok_cfg: TokenizerConfig,
    train_cfg: TrainConfig,
    train_images: torch.Tensor | Dataset,
    val_images: torch.Tensor | Dataset,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    plot: bool = True,
    on_log: Callable[[int, SetTokenizer], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train a ``SetTokenizer`` (stage 1, then stage 2 if ``train_cfg.disc_steps``) and evaluate its EMA weights.

    train_images, val_images: uint8 (N, 3, S, S) tensors with S = tok_cfg.image_size (or Datasets of (uint8 image,
    label)). Writes out_dir/checkpoint.pt (model, EMA, optimizer, scheduler, step, RNG, config), out_dir/log.csv,
    out_dir/loss_curve.png (unless ``plot=False``). With ``resume`` an existing checkpoint of the same configuration
    is continued at its step (a finished run returns its metrics without training); one of another configuration
    is not (the run starts over and prints what differs). The configuration is the tokenizer and train configs and
    the ``fingerprint`` of the train and val images (``config["inputs"]``). Returns: val_psnr (dB, mean
    per image, EMA weights), val_psnr_raw (the raw weights), val token statistics (val_usage, val_entropy, ...),
    train usage / entropy of the last log interval, steps, wall_time_s (training only), and the resolved config.
    ``on_log(step, ema_model) -> {name: float}``, if given, runs at every log row after the validation metrics
    (EMA weights, eval mode); its values become columns of that row of log.csv (e.g.
    ``tokenset.baselines.matching.InstabilityProbe``).
    """
    if not isinstance(tok_cfg, TokenizerConfig) or not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"fit_tokenizer expects (TokenizerConfig, TrainConfig), got "
                         f"({type(tok_cfg).__name__}, {type(train_cfg).__name__})")
    _check_images_arg(train_images, "train_images", tok_cfg.image_size)
    _check_images_arg(val_images, "val_images", tok_cfg.image_size)
    out_dir = Path(out_dir)
    device = torch.device(device)
    rank, _ = rank_world()
    config = {"tokenizer": tok_cfg.to_dict(), "train": train_cfg.to_dict(),
              "inputs": {"train_images": fingerprint(train_images), "val_images": fingerprint(val_images)}}
    torch.manual_seed(train_cfg.seed)
    model = SetTokenizer(tok_cfg)
    torch.manual_seed(train_cfg.seed + rank)  # per-rank streams for shuffles and restarts
    val_limit = train_cfg.val_limit

    def eval_fn(ema: nn.Module, step: int) -> dict[str, float]:
        row = evaluate_tokenizer(ema, val_images, limit=val_limit, device=device)
        if on_log is not None:
            row.update({k: float(v) for k, v in on_log(step, ema).items()})  # type: ignore[arg-type]
        return row

    batches = image_batches(train_images, train_cfg.batch_size, train_cfg.seed, train_cfg.flip,
                            train_cfg.num_workers, rotate=train_cfg.rotate)
    warmup = int(train_cfg.quantizer_warmup * train_cfg.steps)
    stage1 = Trainer(model, train_cfg, out_dir, loss_fn=_TokenizerLoss(warmup), config=config, device=device,
                     eval_fn=eval_fn, stage=1, progress=progress)
    stage2_ckpt = None
    if resume and train_cfg.disc_steps > 0 and stage1.ckpt_path.is_file():
        state = load_checkpoint(stage1.ckpt_path, map_location=device)
        stage2_ckpt = state if int(state.get("stage", 1)) == 2 and state.get("config") == config else None
    last = {} if stage2_ckpt is not None else stage1.fit(batches, resume=resume)
    trainer = stage1
    if train_cfg.disc_steps > 0:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.decoder.parameters():
            p.requires_grad_(True)
        stage2 = _DecoderGanTrainer(model, train_cfg, out_dir, config=config, device=device, eval_fn=eval_fn,
                                    total_steps=train_cfg.disc_steps, first_step=train_cfg.steps, stage=2,
                                    progress=progress)
        if stage2_ckpt is None:  # stage 2 starts from stage 1's EMA weights (raw = EMA; the frozen parts stay so)
            model.load_state_dict(stage1.ema.state_dict())
            stage2.ema.load_state_dict(stage1.ema.state_dict())
            stage2.elapsed = stage1.elapsed
            stage2.step = stage2.first_step = stage1.step
        last = stage2.fit(batches, resume=resume)
        trainer = stage2
    metrics: dict[str, Any] = {}
    if rank == 0:
        final = evaluate_tokenizer(trainer.ema, val_images, device=device)
        raw = evaluate_tokenizer(trainer.model, val_images, device=device)  # type: ignore[arg-type]
        metrics = {**final, "val_psnr_raw": raw["val_psnr"],
                   "train_usage": last.get("usage"), "train_entropy": last.get("entropy"),
                   "steps": trainer.step, "wall_time_s": round(trainer.elapsed, 1),
                   "stopped_by_budget": trainer.step < train_cfg.steps + train_cfg.disc_steps,
                   "config": config}
        if plot:
            plot_log(trainer.log_path, out_dir / "loss_curve.png")
    return metrics


def plot_log(csv_path: str | Path, png_path: str | Path) -> Path:
    """Loss curve figure from a training log: reconstruction loss, validation PSNR and codebook usage vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.read_csv(csv_path)
    panels = [c for c in ("recon_loss", "val_psnr", "val_usage") if c in df.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, col in zip(axes[0], panels):
        sns.lineplot(data=df, x="step", y=col, hue="stage" if df["stage"].nunique() > 1 else None, ax=ax,
                     marker="o", markersize=3)
        if col == "recon_loss":
            ax.set_yscale("log")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m tokenset.train [--params params.yaml] [--out results/tokenizer] [--device cpu] [--fresh]``.

    Trains the tokenizer of the params file's ``tokenizer``/``train`` sections on its ``data`` section and
    writes metrics.json next to the checkpoint. Under ``torchrun`` (RANK/WORLD_SIZE set) it joins the process
    group (nccl on CUDA, else gloo) and each rank uses cuda:LOCAL_RANK when --device is cuda.
    """
    import argparse
    import json

    from tokenset import data as data_mod
    from tokenset.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="results/tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    data_cfg = load_params(args.params, "data")
    tok_cfg = load_params(args.params, "tokenizer")
    train_cfg = load_params(args.params, "train")
    if data_cfg.name == "imagefolder":
        train_data: Any = data_mod.load_dataset(data_cfg, "train")
        val_data: Any = data_mod.load_dataset(data_cfg, "val")
    else:
        train_data = data_mod.load_arrays(data_cfg, "train")[0]
        val_data = data_mod.load_arrays(data_cfg, "val")[0]
    metrics = fit_tokenizer(tok_cfg, train_cfg, train_data, val_data, args.out, device=device,
                            resume=not args.fresh)
    if rank_world()[0] == 0:
        atomic.write_text(Path(args.out) / "metrics.json", json.dumps(metrics, indent=1))
        print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
