"""The optimisation loop shared by every model of the library: ``Trainer``.

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

``make_batches`` is a ``Batches``: start step -> an iterator of batches for steps start, start+1, ... (images:
``tokenset.batches.image_batches``). The tokenizer's recipe on top of this loop is ``tokenset.train``; its stage 2
(a decoder fine-tune against a patch discriminator) is ``tokenset.decoder_gan``.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from tokenset import atomic
from tokenset.checkpoint import config_changes, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tokenset.config import TrainConfig

__all__ = ["Trainer", "WarmupCosine", "Batches", "rank_world"]

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
                    shown = {k: f"{v:.4g}" for k, v in last.items() if k in ("loss", "val_psnr")}
                    bar.set_postfix(shown)
                    if self.progress:  # one line per log row: what `dvc repro` shows while a stage trains
                        self._say(f"{self.out_dir.name}: stage {self.stage} step {self.step}/{end} "
                                  + " ".join(f"{k} {v}" for k, v in shown.items()) + f" ({self.elapsed:.0f} s)")
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
