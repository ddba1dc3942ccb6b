"""Training loops: one reusable optimisation core (``Trainer``) and the tokenizer's recipe on top (``fit_tokenizer``).

``Trainer(model, cfg, out_dir, loss_fn=..., config=...)`` owns everything that is not the model or the loss:
AdamW (weight decay on weight matrices only), linear warm-up then cosine decay, gradient clipping, an EMA copy of
the weights, a CSV log every ``cfg.log_every`` steps (with an optional ``eval_fn`` on the EMA model), tqdm, atomic
checkpoints every ``cfg.ckpt_every`` steps and at the end, resume from the last checkpoint at the saved step if it
holds the same resolved configuration (the same batches, the same RNG streams: an interrupted CPU run ends
bit-identical to an uninterrupted one; a checkpoint of another configuration is not resumed, the run says what
differs and starts over), a
wall-clock budget (``cfg.max_minutes``), and DDP when ``torch.distributed`` is initialised (rank-0 logs and
checkpoints, ``cfg.batch_size`` is the global batch). ``loss_fn(model, batch) -> dict`` returns at least the scalar
tensor ``"loss"``; every other entry is logged. A loop for another model is ``Trainer(...).fit(make_batches)``, e.g.
the count denoiser: ``loss_fn = lambda model, batch: {"loss": cross_entropy(model(z_t, t, labels), counts)}``.

``fit_tokenizer`` trains ``SetTokenizer`` on images: stage 1 (L2 + quantizer losses, all weights) and, if
``train_cfg.disc_steps > 0``, stage 2 (decoder only, L2 + a hinge patch-discriminator loss, as in the paper's
recipe). It writes ``out_dir/checkpoint.pt``, ``out_dir/log.csv`` and ``out_dir/loss_curve.png`` and returns the
final validation metrics of the EMA weights.

Images are passed as uint8 tensors (N, 3, H, W) in [0, 255] (``tokenset.data.load_arrays``), the fast path for data
that fits in memory; a ``torch.utils.data.Dataset`` yielding ``(uint8 image (3, H, W), label)`` (e.g.
``tokenset.data.load_dataset(cfg, split)`` for an ImageFolder) is read through a DataLoader instead.

``python -m tokenset.train --params params.yaml --out results/tokenizer`` runs ``fit_tokenizer`` from the
``data``/``tokenizer``/``train`` sections; under ``torchrun`` it initialises the process group itself.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from tokenset import atomic
from tokenset.checkpoint import (config_changes, fingerprint, load_checkpoint, rng_state, save_checkpoint,
                                 set_rng_state)
from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.data.transforms import random_hflip
from tokenset.images import psnr, to_float, to_uint8
from tokenset.quantizer import code_statistics
from tokenset.tokenizer import SetTokenizer

__all__ = ["Trainer", "WarmupCosine", "StepSampler", "PatchDiscriminator", "DecoderGanTrainer", "fit_tokenizer",
           "reuse_tokenizer_run", "evaluate_tokenizer", "image_batches", "rank_world", "plot_log", "main"]

Batches = Callable[[int], Iterator[Any]]  # start step -> an iterator of batches for steps start, start+1, ...


# --------------------------------------------------------------------------------------------- helpers


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps to 1, then cosine decay to ``floor`` at
    progress 1. Progress is ``step / total``, or, with a time budget and ``by_time``, the larger of that and the
    fraction of the budget spent (so the decay completes within the budget; not bit-reproducible)."""

    def __init__(self, warmup: int, total: int, floor: float = 0.0) -> None:
        self.warmup, self.total, self.floor = warmup, max(total, 1), floor
        self.last_factor = 0.0

    def factor(self, step: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup:
            f = (step + 1) / self.warmup
        else:
            span = max(self.total - self.warmup, 1)
            progress = min(max((step - self.warmup) / span, time_fraction), 1.0)
            f = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        self.last_factor = f
        return f

    def state_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "total": self.total, "floor": self.floor, "last_factor": self.last_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup, self.total = int(state["warmup"]), int(state["total"])
        self.floor, self.last_factor = float(state["floor"]), float(state["last_factor"])


class _CsvLog:
    """Rows of scalars in a CSV file; a new column rewrites the file with the union of columns."""

    def __init__(self, path: Path, truncate_after: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                self.rows = list(csv.DictReader(fh))
            if truncate_after is not None:  # rows logged after the checkpoint we resume from are redone
                self.rows = [r for r in self.rows if int(float(r["step"])) <= truncate_after]
            else:
                self.rows = []
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields or ["step"])
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_text(self.path, text.getvalue())


def _number(text: Any) -> Any:
    """A CSV cell back as the int or float it was written from (str(float) round-trips exactly), else unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            continue
    return text


def _check_fits(model: nn.Module, weights: Any, what: str) -> None:
    """Raise ValueError listing missing / unexpected keys and shape mismatches unless ``weights`` (a state dict)
    fits ``model`` exactly."""
    if not isinstance(weights, dict):
        raise ValueError(f"{what}: expected a state dict, got {type(weights).__name__}")
    ours = model.state_dict()
    problems = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(ours[k].shape)}" for k, v in weights.items()
                if k in ours and isinstance(v, torch.Tensor) and v.shape != ours[k].shape]
    problems += [f"missing {k}" for k in ours if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in ours]
    if problems:
        more = f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"{what} do not fit this model (another preset?): {'; '.join(problems[:5])}{more}")


# --------------------------------------------------------------------------------------------- the loop core


class Trainer:
    """The optimisation loop shared by every model of the library (see the module docstring).

    model: the module to train (wrapped in DDP when a process group is initialised); loss_fn(model, batch) -> dict
    with a scalar "loss"; config: the resolved configuration saved in every checkpoint; eval_fn(ema_model, step) ->
    dict of floats, logged (rank 0 only); params: the parameters to optimise (default: all that require grad);
    name: checkpoint ``out_dir/{name}.pt`` and log ``out_dir/{log_name}``; stage: recorded in log and checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
        config: dict[str, Any],
        device: str | torch.device = "cpu",
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        params: list[nn.Parameter] | None = None,
        total_steps: int | None = None,
        first_step: int = 0,
        name: str = "checkpoint",
        log_name: str = "log.csv",
        stage: int = 1,
        progress: bool = True,
    ) -> None:
        self.cfg, self.loss_fn, self.eval_fn, self.config = cfg, loss_fn, eval_fn, config
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / f"{name}.pt"
        self.log_path = self.out_dir / log_name
        self.stage, self.progress = stage, progress
        self.rank, self.world = rank_world()
        self.first_step = first_step
        self.total_steps = cfg.steps if total_steps is None else total_steps  # this loop's steps
        self.step = first_step
        self.elapsed = 0.0  # wall seconds of training so far (carried across resumes and stages)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ddp = self.wrap(self.trained_module())  # what loss_fn / train_step call (DDP when distributed)
        if params is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
        ids = {id(p) for p in params}
        named = [(n, p) for n, p in self.model.named_parameters() if id(p) in ids]
        no_decay = ("embedding", "latent_tokens", "mask_token", "codebook", "seeds")
        decay = [p for n, p in named if p.ndim >= 2 and not any(k in n for k in no_decay)]
        other = [p for n, p in named if not (p.ndim >= 2 and not any(k in n for k in no_decay))]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.99))
        self.scheduler = WarmupCosine(cfg.warmup_steps, self.total_steps)
        self._sums: dict[str, float] = {}
        self._count = 0

    def trained_module(self) -> nn.Module:
        """The module whose forward a training step calls (override when a step uses a part of the model)."""
        return self.model

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around ``module`` when a process group is initialised (gradients of trainable parameters are
        all-reduced; frozen ones are skipped), else ``module`` itself."""
        if self.world == 1:
            return module
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, weights_only-loadable."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "first_step": self.first_step, "stage": self.stage, "elapsed_s": self.elapsed,
            "rng": rng_state(), "log_sums": dict(self._sums), "log_count": self._count,
            "config": self.config, **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("model", "ema"):  # checked before anything is copied: a refused state leaves the model as it was
            _check_fits(self.model, state.get(key), f"{self.ckpt_path}: the checkpoint's {key!r} weights")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as err:
            raise ValueError(f"{self.ckpt_path}: the checkpoint's weights do not fit this model "
                             f"(another preset?): {str(err).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed_s"])
        self.first_step = int(state.get("first_step", self.first_step))
        # the log interval in progress (checkpoints between log rows), so the next row averages the same steps
        self._sums = {k: float(v) for k, v in state.get("log_sums", {}).items()}
        self._count = int(state.get("log_count", 0))
        set_rng_state(state["rng"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Override to checkpoint more (e.g. a discriminator and its optimizer)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.ckpt_path, self.state_dict())
        if self.world > 1:
            dist.barrier()

    def resume(self) -> bool:
        """Load ``ckpt_path`` if it exists, holds this run (the same resolved ``config``) and belongs to this stage;
        True if loaded, and says at which step it continues. A checkpoint of another configuration is not loaded:
        the run starts over at ``first_step`` (and replaces that checkpoint at its first save), saying what differs.
        """
        if not self.ckpt_path.is_file():
            return False
        state = load_checkpoint(self.ckpt_path, map_location=self.device)
        changes = config_changes(state.get("config"), self.config)
        if changes:
            more = f"; ... {len(changes) - 5} more" if len(changes) > 5 else ""
            self._say(f"{self.ckpt_path}: written with another configuration ({'; '.join(changes[:5])}{more}); "
                      f"not resumed: stage {self.stage} trains from step {self.step}")
            return False
        if int(state.get("stage", 1)) != self.stage:
            return False
        self.load_state_dict(state)
        end = self.first_step + self.total_steps
        if self.step >= end:
            self._say(f"{self.ckpt_path}: stage {self.stage} already finished (step {self.step} of {end}, same "
                      "configuration): reused, not trained again")
        else:
            self._say(f"{self.ckpt_path}: resuming stage {self.stage} at step {self.step} of {end} "
                      "(same configuration)")
        return True

    def _say(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)

    # ------------------------------------------------------------------------------------------ one step

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimisation step on ``batch`` (override for multi-network steps, e.g. GANs)."""
        self.ddp.train()
        out = self.loss_fn(self.ddp, batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        out["grad_norm"] = nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.update_ema()
        return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * model, with d = min(ema_decay, (1 + n) / (10 + n)) after n updates
        (the warm-up keeps early EMA weights from being dominated by the random init); buffers are copied."""
        n = self.step - self.first_step
        d = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def _set_lr(self) -> None:
        budget = self.cfg.max_minutes * 60
        time_fraction = self.elapsed / budget if (budget > 0 and self.cfg.anneal_to_budget) else 0.0
        factor = self.scheduler.factor(self.step - self.first_step, time_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self, batches: Batches, resume: bool = True) -> dict[str, Any]:
        """Train until ``first_step + total_steps`` steps (or the time budget); returns the last log row (that of
        the log file when a resumed run had nothing left to train)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:  # temporary files of writes cut short by a killed run
            for name in (self.ckpt_path.name, self.log_path.name):
                for tmp in self.out_dir.glob(f".{name}.*.tmp"):
                    tmp.unlink()
        if resume:
            self.resume()
        end = self.first_step + self.total_steps
        log = _CsvLog(self.log_path, truncate_after=self.step) if self.rank == 0 else None
        budget = self.cfg.max_minutes * 60
        last: dict[str, Any] = {}
        bar = tqdm(total=end, initial=self.step, desc=f"stage {self.stage}", dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0, leave=False)
        it = batches(self.step)
        try:
            while self.step < end:
                if budget > 0 and self.elapsed >= budget:
                    break
                t0 = time.perf_counter()
                self._set_lr()
                if hasattr(self.loss_fn, "at_step"):  # losses with a schedule (e.g. the quantizer warm-up)
                    self.loss_fn.at_step(self.step)
                out = self.train_step(_to_device(next(it), self.device))
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                for k, v in out.items():
                    self._sums[k] = self._sums.get(k, 0.0) + v
                self._count += 1
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    last = self._log(log)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss", "val_psnr")})
                if self.step % self.cfg.ckpt_every == 0 and self.step < end:
                    self.save()
        finally:
            bar.close()
        if self._count:  # a budget stop between log rows still logs the partial interval
            last = self._log(log)
        elif not last and log is not None and log.rows:  # nothing left to train: the run's last row
            last = {k: _number(v) for k, v in log.rows[-1].items() if v not in ("", None)}
        self.save()
        return last

    def _log(self, log: _CsvLog | None) -> dict[str, Any]:
        row: dict[str, Any] = {"step": self.step, "stage": self.stage,
                               "lr": self.cfg.lr * self.scheduler.last_factor, "elapsed_s": round(self.elapsed, 3)}
        row.update({k: v / max(self._count, 1) for k, v in self._sums.items()})
        self._sums, self._count = {}, 0
        if self.eval_fn is not None and self.rank == 0:
            t0 = time.perf_counter()
            row.update(self.eval_fn(self.ema, self.step))
            row["eval_s"] = round(time.perf_counter() - t0, 3)
        if log is not None:
            log.append(row)
        return row


# --------------------------------------------------------------------------------------------- data


class StepSampler(Sampler[list[int]]):
    """Batches of indices for steps start, start+1, ...: epoch e is a permutation seeded by (seed, e), sharded
    over ranks, cut into full batches. Batch s is the same whatever step the iteration starts at."""

    def __init__(self, n: int, batch: int, seed: int, start: int, rank: int, world: int) -> None:
        self.n, self.batch, self.seed, self.start, self.rank, self.world = n, batch, seed, start, rank, world
        self.per_epoch = (n // world) // batch
        if self.per_epoch < 1:
            raise ValueError(f"{n} training images are fewer than one batch of {batch} per rank x {world} ranks")

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank::self.world]
            for j in range(k, self.per_epoch):
                yield order[j * self.batch:(j + 1) * self.batch].tolist()
            step = (epoch + 1) * self.per_epoch

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs a number
        return 1 << 62


def image_batches(data: torch.Tensor | Dataset, batch_size: int, seed: int, flip: bool,
                  num_workers: int = 0, rotate: bool = False) -> Batches:
    """A ``Batches`` of float images (B, 3, H, W) in [-1, 1] from uint8 images (N, 3, H, W) or a Dataset of
    (uint8 (3, H, W), label); ``batch_size`` is global (divided over ranks). Augmentation, drawn per (seed, step,
    rank): ``flip`` left-right flips, ``rotate`` rotations by k * 90 degrees (square images)."""
    rank, world = rank_world()
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {world} processes")
    local = batch_size // world

    def flip_and_scale(images: torch.Tensor, step: int) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"training images must be uint8 in [0, 255], got {images.dtype}")
        g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + rank)
        if flip:
            images = random_hflip(images, g)
        if rotate:
            k = torch.randint(4, (images.shape[0],), generator=g)
            images = torch.stack([img.rot90(int(r), dims=(-2, -1)) for img, r in zip(images, k)])
        return to_float(images)

    def make(start: int) -> Iterator[torch.Tensor]:
        sampler = StepSampler(len(data), local, seed, start, rank, world)
        if isinstance(data, torch.Tensor):
            for step, idx in enumerate(sampler, start):
                yield flip_and_scale(data[idx], step)
        else:
            loader = DataLoader(data, batch_sampler=sampler, num_workers=num_workers,
                                generator=torch.Generator().manual_seed(seed))
            for step, (images, _) in enumerate(loader, start):
                yield flip_and_scale(images, step)

    return make


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


# --------------------------------------------------------------------------------------------- stage 2


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: 4x4 convs (stride 2, then 1) with GroupNorm and LeakyReLU, one real/fake logit per patch:
    (B, 3, H, W) -> (B, 1, h, w)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in, c = channels, width
        for i in range(layers):
            mods += [nn.Conv2d(c_in, c, 4, stride=2 if i < layers - 1 else 1, padding=1)]
            if i > 0:
                mods += [nn.GroupNorm(min(32, c // 4), c)]
            mods += [nn.LeakyReLU(0.2)]
            c_in, c = c, min(c * 2, 8 * width)
        mods += [nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _DecoderStep(nn.Module):
    """Stage 2's generator: frozen encoder + quantizer (no gradients), trainable decoder: images -> reconstruction."""

    def __init__(self, tokenizer: SetTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def train(self, mode: bool = True) -> "_DecoderStep":
        """Only the decoder ever trains here: encoder and quantizer stay in eval mode (no dead-code restarts)."""
        super().train(mode)
        self.tokenizer.encoder.eval()
        self.tokenizer.quantizer.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes, _, _ = self.tokenizer.quantize(images)
        return self.tokenizer.decode_codes(codes)  # in training mode: the tokens in a random order per sample


class DecoderGanTrainer(Trainer):
    """Stage 2: the decoder alone learns from L2 + disc_weight * hinge generator loss against a PatchGAN that
    learns from the hinge loss; encoder and quantizer are frozen (tokens are computed without gradients).

    ``fit_tokenizer`` runs it after stage 1; on its own (a decoder fine-tune from a checkpoint, e.g.
    experiments/tune_discriminator.py): ``DecoderGanTrainer(model, cfg, out_dir, config={}, total_steps=n,
    first_step=0, stage=2).fit(image_batches(...))`` with the model's non-decoder parameters frozen."""

    def __init__(self, model: SetTokenizer, cfg: TrainConfig, out_dir: str | Path, **kw: Any) -> None:
        super().__init__(model, cfg, out_dir, loss_fn=self._unused, params=list(model.decoder.parameters()), **kw)
        self.disc = PatchDiscriminator(model.cfg.channels_in).to(self.device)
        self.disc_ddp = self.wrap(self.disc)
        self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                          weight_decay=cfg.weight_decay)

    def trained_module(self) -> nn.Module:
        return _DecoderStep(self.model)  # type: ignore[arg-type]

    @staticmethod
    def _unused(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise AssertionError("stage 2 overrides train_step")

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        self.ddp.train()
        recon = self.ddp(batch)
        recon_loss = F.mse_loss(recon, batch)
        out: dict[str, float] = {}
        loss = recon_loss
        if self.cfg.disc_weight > 0:  # disc_weight 0: an L2-only decoder fine-tune, no discriminator is run
            # discriminator step (hinge)
            for p in self.disc.parameters():
                p.requires_grad_(True)
            logits = self.disc_ddp(torch.cat([batch, recon.detach()]))  # one forward per backward (DDP)
            real, fake = logits.chunk(2)
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.grad_clip)
            for g in self.disc_opt.param_groups:
                g["lr"] = self.optimizer.param_groups[0]["lr"]
            self.disc_opt.step()
            # decoder step against the frozen discriminator (no DDP, no gradients to reduce)
            for p in self.disc.parameters():
                p.requires_grad_(False)
            g_loss = -self.disc(recon).mean()
            loss = recon_loss + self.cfg.disc_weight * g_loss
            out = {"g_loss": float(g_loss.detach()), "d_loss": float(d_loss.detach())}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.update_ema()
        return {"loss": float(loss.detach()), "recon_loss": float(recon_loss.detach()), **out,
                "grad_norm": float(grad_norm)}

    def extra_state(self) -> dict[str, Any]:
        return {"disc": self.disc.state_dict(), "disc_optimizer": self.disc_opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_optimizer"])


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
