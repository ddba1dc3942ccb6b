"""S seeds of one tokenizer configuration trained as ONE batched model (torch.func.vmap) vs S runs one after another.

    python benchmarks/bench_batched_seeds.py [--preset small] [--seeds 3] [--steps 10] [--warmup 3] [--threads 2]
                                             [--batch B] [--attention math|sdpa] [--head loop|vmap|unfold]
                                             [--grad-mode autograd|func]
    python benchmarks/bench_batched_seeds.py --preset tiny:pixel_head=conv   # a preset with fields overridden

Same total work in every variant: S seeds x N timed steps of batch B (each seed its own weights, its own images and
its own token order). Timed step by step, the variants interleaved (one batched step, then one step of each seed in
each sequential variant, repeated), so that a change of machine load hits all of them alike; medians and means of
the per-seed-step times are printed.

  sequential real: S ``SetTokenizer`` models, one step each in turn: ``model(images)`` (the training forward:
                   input checks, quantizer with its statistics and dead-code bookkeeping, decoder on shuffled
                   codes) -> loss -> backward -> AdamW step (betas and weight-decay groups as ``Trainer``). What
                   ``Trainer.train_step`` does, less gradient clipping and the EMA update (in no variant).
  sequential pure: the same S models, stepping through ``PureStep`` (below) one after another.
  batched:         ``torch.func.stack_module_state`` of the S models -> one set of (S, ...) leaf parameters;
                   ``vmap(functional_call(PureStep))`` over (parameters, images, token orders) -> S losses;
                   ``losses.sum().backward()`` (the seeds share no parameter, so each seed's slice of the gradient is
                   its own run's gradient); ONE AdamW over the stacked parameters (AdamW is elementwise with a step
                   count shared by all seeds, so this is S independent AdamWs).

How the batched model is formulated (defaults: the fastest combination found on this machine):
  --attention math  attention as softmax(q k^T / sqrt(d)) v in plain matmuls; ``sdpa`` keeps
                    ``F.scaled_dot_product_attention``, whose CPU kernel has no vmap batching rule (vmap falls back
                    to running it once per seed, with a warning);
  --head loop       the pixel head (the small conv net of the ``small`` preset) runs OUTSIDE vmap, once per seed on
                    that seed's features with that seed's slice of the stacked weights (autograd carries the
                    gradients back into the stacked tensors); ``vmap`` keeps it under vmap, where each convolution
                    becomes one grouped convolution (groups = S) whose CPU backward is slow; ``unfold`` writes each
                    convolution as im2col + batched matmul (slower still);
  --grad-mode autograd  autograd through vmap; ``func``: ``vmap(grad_and_value(...))`` (not with --head loop).
All of these compute the same function up to float rounding (the correctness check below says how close).

What ``PureStep`` (the batched step, and ``sequential pure``) computes differently from a real training step:
  * no input checks (``SetTokenizer._check_images`` reads min / max with ``float()``: data-dependent, vmap refuses);
  * the quantizer is written out: normalise, nearest code by cosine (argmax), straight-through codes, codebook +
    0.25 x commitment loss (the same arithmetic as ``CosineQuantizer.forward``), but WITHOUT its bookkeeping: no
    code histogram (``bincount``) and usage / entropy / perplexity statistics, no ring buffer of recent encoder
    outputs, no window counts, no dead-code restart (in-place buffer and codebook updates and ``int()`` of tensors,
    which vmap cannot take). The chosen indices are returned, so histograms and restarts could be run outside vmap
    on the stacked (S, ...) tensors; this benchmark does not do it (``sequential real`` - ``sequential pure`` is
    what all of it costs);
  * the per-sample token order of the set decoder is drawn outside vmap (``torch.rand(S, B, M).argsort``) and passed
    in, instead of being drawn inside ``forward`` from torch's global generator;
  * the matching decoder arms (``decoder_input`` hungarian / chamfer) are not supported;
  * the quantizer warm-up (decoder on unquantised latents for the first 10% of steps), the learning-rate schedule,
    gradient clipping and the EMA copy are left out of all variants (cheap elementwise work that batches easily:
    per-seed gradient norms are norms over all but the seed dimension).
The correctness check compares one step from identical init on identical images and token orders: ``PureStep``
against ``SetTokenizer.forward`` (the loss of a real step, same token order), and the batched step against the
sequential pure steps (losses, gradients, parameters after the AdamW update, and the losses of a second step).

A benchmark, not a test: timings vary with the machine and its load (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from bench_tokenizer import parse_spec  # this script's folder is on sys.path when it runs
from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.set_decoders import MATCHING_ARMS
from tokenset.tokenizer import Attention, SetTokenizer

NO_DECAY = ("embedding", "latent_tokens", "mask_token", "codebook", "seeds")  # as tokenset.trainer.Trainer
BETAS = (0.9, 0.99)  # as tokenset.trainer.Trainer


class PureStep(nn.Module):
    """The tokenizer's training loss as a pure function of (weights, images, token order): vmap-able.

    ``part="all"``: images (B, 3, H, W), perm (B, M) int64 (a permutation of the M tokens per sample) ->
    (loss (), indices (B, M)). ``part="features"``: the same inputs -> (decoder features at the grid (B, N, W),
    quantizer loss (), indices); ``part="head"``: features (B, N, W) -> reconstruction (B, 3, H, W) (the pixel head).
    """

    def __init__(self, model: SetTokenizer) -> None:
        super().__init__()
        if model.cfg.decoder_input in MATCHING_ARMS:
            raise ValueError(f"decoder_input {model.cfg.decoder_input!r}: the matching arms are not benchmarked")
        self.model = model

    def forward(self, x: torch.Tensor, perm: torch.Tensor | None = None, part: str = "all"):
        if part == "head":
            return self.model.decoder.head(x)
        feats, quant_loss, indices = self.features(x, perm)
        if part == "features":
            return feats, quant_loss, indices
        recon = self.model.decoder.head(feats)
        return F.mse_loss(recon.float(), x.float()) + quant_loss, indices

    def features(self, images: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, quantizer, dec = self.model, self.model.quantizer, self.model.decoder
        latents = model.encoder(images)  # (B, M, D)
        # CosineQuantizer.forward without its statistics and restart bookkeeping
        z_n = F.normalize(latents.float(), dim=-1)
        flat = z_n.reshape(-1, quantizer.dim)  # (B*M, D)
        codebook = quantizer.normalized_codebook()  # (C, D)
        indices = (flat.detach() @ codebook.t()).argmax(dim=-1)  # (B*M,)
        q = F.embedding(indices, codebook)
        codebook_loss = F.mse_loss(q, flat.detach())
        commitment_loss = F.mse_loss(flat, q.detach())
        quant_loss = quantizer.codebook_weight * codebook_loss + quantizer.commitment_weight * commitment_loss
        codes = (flat + (q - flat).detach()).reshape(z_n.shape)  # straight-through
        if not model.cfg.ordered:  # SetTokenizer._shuffled with the token order given
            codes = codes.gather(1, perm.unsqueeze(-1).expand(-1, -1, codes.shape[-1]))
        # Decoder.forward_with_logits up to (not including) the pixel head
        b = codes.shape[0]
        latents_in, _ = dec.latents(codes)
        grid = dec.mask_token.expand(b, dec.positional_embedding.shape[1] - 1, -1)
        x = torch.cat([dec.class_embedding.expand(b, -1, -1), grid], dim=1) + dec.positional_embedding
        n = x.shape[1]
        x = dec.transformer(torch.cat([x, latents_in], dim=1))
        return x[:, 1:n], quant_loss, indices.reshape(z_n.shape[:-1])


def math_attention(self: Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """``Attention.forward`` with softmax(q k^T / sqrt(d)) v written out (matmuls, which vmap batches) instead of
    ``F.scaled_dot_product_attention`` (whose CPU kernel has no vmap rule: vmap runs it once per seed)."""
    context = x if context is None else context
    b, l, w = x.shape
    h = self.heads
    d = w // h
    q = self.q(x).reshape(b, l, h, d).transpose(1, 2)  # (B, h, L, d)
    k, v = self.kv(context).reshape(b, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)  # 2 x (B, h, S, d)
    att = (q @ k.transpose(-2, -1)).mul(1.0 / math.sqrt(d)).softmax(dim=-1)
    return self.proj((att @ v).transpose(1, 2).reshape(b, l, w))


def unfold_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``Conv2d.forward`` (stride 1, no dilation, one group) as im2col + matmul: under vmap a batched matmul over the
    seeds instead of a grouped convolution (groups = S), whose CPU backward is slow."""
    b, _, hgt, wid = x.shape
    cols = F.unfold(x, self.kernel_size, padding=self.padding)  # (B, C k k, H W)
    out = (self.weight.reshape(self.out_channels, -1) @ cols).reshape(b, self.out_channels, hgt, wid)
    return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def patch_for_vmap(module: nn.Module, attention: str, conv: str) -> nn.Module:
    """Swap the forwards of ``module``'s attention / conv layers (in place) for the formulations chosen."""
    for m in module.modules():
        if attention == "math" and isinstance(m, Attention):
            m.forward = types.MethodType(math_attention, m)
        if conv == "unfold" and isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1 or m.padding_mode != "zeros":
                raise ValueError(f"--head unfold: unsupported {m}")
            m.forward = types.MethodType(unfold_conv, m)
    return module


def param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float, extra_dims: int) -> list[dict]:
    """AdamW groups as ``Trainer``: weight decay on weight matrices only (``extra_dims`` leading seed dims)."""
    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim - extra_dims >= 2 and not any(k in name for k in NO_DECAY)

    return [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]


def make_models(cfg: TokenizerConfig, seeds: int) -> list[SetTokenizer]:
    models = []
    for s in range(seeds):
        torch.manual_seed(s)
        models.append(SetTokenizer(cfg).train())
    return models


class Sequential:
    """S models with their own AdamW, stepped one after another (``real``: through ``SetTokenizer.forward``)."""

    def __init__(self, models: list[SetTokenizer], lr: float, weight_decay: float) -> None:
        self.models = models
        self.pure = [PureStep(m) for m in models]
        self.opts = [torch.optim.AdamW(param_groups(list(m.named_parameters()), weight_decay, 0), lr=lr,
                                       betas=BETAS) for m in models]

    def step(self, s: int, images: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
        """One step of seed s; perm None: the real forward (it draws its own token order). Returns the loss."""
        if perm is None:
            loss = self.models[s](images)[1]["loss"]
        else:
            loss = self.pure[s](images, perm)[0]
        self.opts[s].zero_grad(set_to_none=True)
        loss.backward()
        self.opts[s].step()
        return loss.detach()


class Batched:
    """S models stacked into (S, ...) parameters, stepped together under vmap with one AdamW.

    ``head``: "vmap" (the pixel head under vmap too: its convolutions become grouped convolutions, groups = S),
    "unfold" (under vmap, convolutions as im2col + batched matmul), "loop" (the pixel head outside vmap, once per
    seed with that seed's slice of the stacked weights; needs ``grad_mode="autograd"``).
    """

    def __init__(self, models: list[SetTokenizer], lr: float, weight_decay: float, grad_mode: str = "autograd",
                 attention: str = "math", head: str = "loop") -> None:
        if head == "loop" and grad_mode != "autograd":
            raise ValueError("head 'loop' needs grad_mode 'autograd'")
        wrappers = [PureStep(m) for m in models]
        params, _ = stack_module_state(wrappers)  # {name: (S, ...) leaf, requires_grad}
        self.params = params
        self.seeds = len(models)
        self.base = patch_for_vmap(copy.deepcopy(wrappers[0]).to("meta"), attention,
                                   "unfold" if head == "unfold" else "vmap")
        self.head_base = copy.deepcopy(wrappers[0]).to("meta")  # unpatched: plain convolutions, one seed at a time
        self.head_names = [n for n in params if n.startswith("model.decoder.head.")]
        self.grad_mode, self.head = grad_mode, head
        self.opt = torch.optim.AdamW(param_groups(list(params.items()), weight_decay, 1), lr=lr, betas=BETAS)

        def one(p: dict[str, torch.Tensor], images: torch.Tensor, perm: torch.Tensor):
            return functional_call(self.base, p, (images, perm))

        def features(p: dict[str, torch.Tensor], images: torch.Tensor, perm: torch.Tensor):
            return functional_call(self.base, p, (images, perm), {"part": "features"})

        self.forward_all = vmap(one)  # (S-stacked params, (S, B, 3, H, W), (S, B, M)) -> ((S,), (S, B, M))
        self.forward_features = vmap(features)  # -> ((S, B, N, W), (S,), (S, B, M))
        self.grad_forward = vmap(grad_and_value(one, has_aux=True))

    def forward(self, images: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        """losses (S,) of all seeds, differentiable w.r.t. the stacked parameters."""
        if self.head != "loop":
            return self.forward_all(self.params, images, perms)[0]
        feats, quant_loss, _ = self.forward_features(self.params, images, perms)
        losses = []
        for s in range(self.seeds):
            head = {n: self.params[n][s] for n in self.head_names}
            recon = functional_call(self.head_base, head, (feats[s],), {"part": "head"})
            losses.append(F.mse_loss(recon.float(), images[s].float()) + quant_loss[s])
        return torch.stack(losses)

    def losses(self, images: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(images, perms)

    def step(self, images: torch.Tensor, perms: torch.Tensor, keep_grads: bool = False) -> torch.Tensor:
        """One step of all S seeds: images (S, B, 3, H, W), perms (S, B, M) -> losses (S,)."""
        self.opt.zero_grad(set_to_none=True)
        if self.grad_mode == "autograd":
            losses = self.forward(images, perms)
            losses.sum().backward()
        else:
            grads, (losses, _) = self.grad_forward(self.params, images, perms)
            for name, p in self.params.items():
                p.grad = grads[name]
        if keep_grads:
            self.last_grads = {n: p.grad.detach().clone() for n, p in self.params.items()}
        self.opt.step()
        return losses.detach()


def token_orders(seeds: int, batch: int, tokens: int) -> torch.Tensor:
    """(S, B, M) int64: a random permutation of the M tokens per seed and sample."""
    return torch.rand(seeds, batch, tokens).argsort(dim=-1)


def correctness(cfg: TokenizerConfig, train: TrainConfig, seeds: int, batch: int, **batched: str) -> dict[str, float]:
    """One step from identical init on identical inputs: pure vs real forward, batched vs sequential pure."""
    models = make_models(cfg, seeds)
    seq = Sequential(copy.deepcopy(models), train.lr, train.weight_decay)
    bat = Batched(copy.deepcopy(models), train.lr, train.weight_decay, **batched)
    gen = torch.Generator().manual_seed(1234)
    images = [torch.rand(seeds, batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1 for _ in range(2)]
    # the real forward draws its token order with torch.rand(B, M).argsort(1) from the global generator, after the
    # encoder and quantizer (which draw nothing while no dead-code restart is due and B*M fits the quantizer's
    # 4096-row buffer): the same draw made here
    perms = []
    for step in range(2):
        rows = []
        for s in range(seeds):
            torch.manual_seed(10_000 * step + s)
            rows.append(torch.rand(batch, cfg.num_tokens).argsort(dim=1))
        perms.append(torch.stack(rows))
    real = []
    for s, m in enumerate(copy.deepcopy(models)):
        torch.manual_seed(s)
        real.append(m(images[0][s])[1]["loss"].detach())
    real = torch.stack(real)
    seq_loss1, seq_grads = [], []
    for s in range(seeds):
        seq_loss1.append(seq.step(s, images[0][s], perms[0][s]))
        seq_grads.append({n: p.grad.detach().clone() for n, p in seq.pure[s].named_parameters()})
    seq_loss1 = torch.stack(seq_loss1)
    bat_loss1 = bat.step(images[0], perms[0], keep_grads=True)
    grad_diff, grad_max = 0.0, 0.0
    for name, g in bat.last_grads.items():
        for s in range(seeds):
            grad_diff = max(grad_diff, float((g[s] - seq_grads[s][name]).abs().max()))
            grad_max = max(grad_max, float(seq_grads[s][name].abs().max()))
    param_diff = max(float((p[s] - dict(seq.pure[s].named_parameters())[n]).detach().abs().max())
                     for n, p in bat.params.items() for s in range(seeds))
    with torch.no_grad():
        seq_loss2 = torch.stack([seq.pure[s](images[1][s], perms[1][s])[0] for s in range(seeds)])
        bat_loss2 = bat.losses(images[1], perms[1])
    return {"loss_step1": float(seq_loss1.abs().max()),
            "pure_vs_real_loss": float((seq_loss1 - real).abs().max()),
            "batched_vs_seq_loss_step1": float((bat_loss1 - seq_loss1).abs().max()),
            "batched_vs_seq_grad": grad_diff, "grad_max": grad_max,
            "batched_vs_seq_param_after_adamw": param_diff,
            "batched_vs_seq_loss_step2": float((bat_loss2 - seq_loss2).abs().max())}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="TokenizerConfig / TrainConfig preset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per seed")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per seed first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="images per seed and step (0: the preset's batch)")
    parser.add_argument("--grad-mode", choices=("autograd", "func"), default="autograd",
                        help="batched gradients: autograd through vmap, or vmap(grad_and_value)")
    parser.add_argument("--attention", choices=("sdpa", "math"), default="math",
                        help="batched attention: F.scaled_dot_product_attention, or softmax(q k^T) v written out")
    parser.add_argument("--head", choices=("loop", "vmap", "unfold"), default="loop",
                        help="batched pixel head: under vmap (grouped convolutions), under vmap with convolutions "
                             "as im2col + matmul, or outside vmap once per seed")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--seeds and --steps must be >= 1, --warmup >= 0")
    if args.head == "loop" and args.grad_mode != "autograd":
        parser.error("--head loop needs --grad-mode autograd")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    name, overrides = parse_spec(args.preset)
    cfg = TokenizerConfig.preset(name, **overrides)
    train = TrainConfig.preset(name)
    batch = args.batch or train.batch_size
    S, N = args.seeds, args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"preset {args.preset}: {S} seeds x {N} timed steps (after {args.warmup} warm-up) of batch {batch}, "
          f"{sum(p.numel() for p in SetTokenizer(cfg).parameters()) / 1e6:.2f}M parameters per seed; "
          f"AdamW lr {train.lr}, weight decay {train.weight_decay}")
    print(f"batched: gradients {args.grad_mode}, attention {args.attention}, pixel head {args.head}")
    batched = dict(grad_mode=args.grad_mode, attention=args.attention, head=args.head)
    check = correctness(cfg, train, S, batch, **batched)
    print(f"correctness, one step from identical init (loss ~{check['loss_step1']:.4f}, "
          f"largest gradient entry {check['grad_max']:.3g}):")
    print(f"  pure step vs SetTokenizer.forward, max |loss diff|: {check['pure_vs_real_loss']:.3e}")
    print(f"  batched vs sequential, max |loss diff| step 1: {check['batched_vs_seq_loss_step1']:.3e}")
    print(f"  batched vs sequential, max |grad diff| step 1: {check['batched_vs_seq_grad']:.3e}")
    print(f"  batched vs sequential, max |param diff| after AdamW: {check['batched_vs_seq_param_after_adamw']:.3e}")
    print(f"  batched vs sequential, max |loss diff| step 2: {check['batched_vs_seq_loss_step2']:.3e}")

    models = make_models(cfg, S)
    seq_real = Sequential(copy.deepcopy(models), train.lr, train.weight_decay)
    seq_pure = Sequential(copy.deepcopy(models), train.lr, train.weight_decay)
    bat = Batched(copy.deepcopy(models), train.lr, train.weight_decay, **batched)
    torch.manual_seed(0)
    pool = 4  # distinct batches, cycled
    images = [torch.rand(S, batch, 3, cfg.image_size, cfg.image_size) * 2 - 1 for _ in range(pool)]
    perms = [token_orders(S, batch, cfg.num_tokens) for _ in range(pool)]
    times: dict[str, list[float]] = {"sequential real": [], "sequential pure": [], "batched": []}
    for i in range(args.warmup + N):
        x, p = images[i % pool], perms[i % pool]
        t_bat = timed(lambda: bat.step(x, p)) / S  # per seed-step
        t_pure = [timed(lambda: seq_pure.step(s, x[s], p[s])) for s in range(S)]
        t_real = [timed(lambda: seq_real.step(s, x[s], None)) for s in range(S)]
        if i >= args.warmup:
            times["batched"].append(t_bat)
            times["sequential pure"] += t_pure
            times["sequential real"] += t_real
    load_after = os.getloadavg()
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    mean = {k: 1000 * statistics.fmean(v) for k, v in times.items()}
    print("| variant | ms per seed-step (median) | ms per seed-step (mean) | seed-steps timed |")
    print("|---|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.1f} | {mean[k]:.1f} | {len(times[k]) if k != 'batched' else len(times[k]) * S} |")
    ratio_real = med["sequential real"] / med["batched"]
    ratio_pure = med["sequential pure"] / med["batched"]
    print(f"ratio sequential / batched (medians): real {ratio_real:.2f}x, pure {ratio_pure:.2f}x "
          f"(> 1: batching is faster)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    return {"correctness": check, "median_ms": med, "mean_ms": mean, "ratio_real": ratio_real,
            "ratio_pure": ratio_pure, "threads": torch.get_num_threads(), "load_before": load_before,
            "load_after": load_after}


if __name__ == "__main__":
    main()
