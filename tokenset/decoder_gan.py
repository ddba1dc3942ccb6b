"""Stage 2 of the tokenizer's recipe: the decoder alone fine-tuned against a patch discriminator (hinge GAN loss).

``PatchDiscriminator`` is a small PatchGAN; ``DecoderGanTrainer`` is a ``tokenset.trainer.Trainer`` whose step
trains the decoder on L2 + ``disc_weight`` * the hinge generator loss while the discriminator learns from the hinge
loss; encoder and quantizer stay frozen (``_DecoderStep``). ``tokenset.train.fit_tokenizer`` runs it after stage 1
when ``train_cfg.disc_steps > 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenset.config import TrainConfig
from tokenset.tokenizer import SetTokenizer
from tokenset.trainer import Trainer

__all__ = ["PatchDiscriminator", "DecoderGanTrainer"]


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
