"""GPU benchmark of the paper presets: tokenizer encode / decode throughput, one training step's time and model FLOP
utilisation (MFU) for the tokenizer and CountDiT-S, and FSDD sampling time (25 steps, B = 64, CountDiT-S).

    python benchmarks/bench_gpu.py [--out DIR] [--device cuda] [--repeats 3]     # paper presets, bf16 autocast
    python benchmarks/bench_gpu.py --tiny [--out DIR]                            # tiny presets on CPU, seconds

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (matmuls,
convolutions, attention; one multiply-add = 2 FLOPs; the optimizer step is not counted). The peak is MEASURED, not
taken from a data sheet: the best rate of a square bf16 matmul (8192^3 on GPU; fp32 512^3 on CPU with ``--tiny``).
MFU = counted FLOPs / step time / measured peak. On a GPU everything runs under bf16 autocast (the quantizer keeps
fp32, as in training). ``--out DIR`` writes ``bench_gpu.json`` and ``bench_gpu.md`` with the date and the device
name. Sized to finish in well under 8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tokenset.config import DenoiserConfig, FSDDConfig, TokenizerConfig
from tokenset.denoiser import CountDiT, count_parameters
from tokenset.fsdd import FSDD

SAMPLING_STEPS = 25


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, in seconds (GPU work synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def measured_peak_flops(device: torch.device, tiny: bool) -> tuple[float, str]:
    """(FLOP/s of the best square matmul, what was measured): bf16 8192^3 on GPU, fp32 512^3 on CPU."""
    n, dtype = (512, torch.float32) if (tiny or device.type != "cuda") else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = best_time(lambda: a @ b, device, repeats=5, warmup=2)
    return 2 * n ** 3 / seconds, f"{str(dtype).replace('torch.', '')} matmul {n}x{n}x{n}"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _train_step_stats(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device,
                      repeats: int, peak: float) -> dict[str, float]:
    """Time of forward + backward + AdamW step; FLOPs of forward + backward; MFU against ``peak``."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def fwd_bwd() -> None:
        with _autocast(device):
            loss = loss_fn()
        loss.backward()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        opt.step()

    model.train()
    seconds = best_time(step, device, repeats)
    opt.zero_grad(set_to_none=True)
    flops = count_flops(fwd_bwd)
    opt.zero_grad(set_to_none=True)
    return {"train_step_s": seconds, "train_step_tflop": flops / 1e12, "mfu": flops / seconds / peak}


def bench_tokenizer(cfg: TokenizerConfig, batch: int, train_batch: int, device: torch.device, repeats: int,
                    peak: float) -> dict[str, Any]:
    from tokenset.tokenizer import SetTokenizer

    model = SetTokenizer(cfg).to(device)
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    model.eval()
    with torch.no_grad():
        with _autocast(device):
            tokens = model.encode(images)
        encode_s = best_time(lambda: _no_grad(lambda: model.encode(images), device), device, repeats)
        decode_s = best_time(lambda: _no_grad(lambda: model.decode(tokens), device), device, repeats)
    train_images = images[:train_batch] if train_batch <= batch else images.repeat(2, 1, 1, 1)[:train_batch]
    stats = _train_step_stats(model, lambda: model(train_images)[1]["loss"], device, repeats, peak)
    return {"params": sum(p.numel() for p in model.parameters()), "batch": batch, "train_batch": train_batch,
            "encode_images_per_s": batch / encode_s, "decode_images_per_s": batch / decode_s, **stats}


def _no_grad(fn: Callable[[], object], device: torch.device) -> object:
    with torch.no_grad(), _autocast(device):
        return fn()


def bench_denoiser(cfg: DenoiserConfig, train_batch: int, sample_batch: int, device: torch.device, repeats: int,
                   peak: float, guidance: float) -> dict[str, Any]:
    model = CountDiT(cfg).to(device)
    process = FSDD(cfg.codebook_size, cfg.total, num_classes=cfg.num_classes)
    g = torch.Generator(device=device).manual_seed(0)
    counts = torch.zeros(train_batch, cfg.codebook_size, dtype=torch.int64, device=device)
    idx = torch.randint(cfg.codebook_size, (train_batch, cfg.total), device=device, generator=g)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    labels = torch.randint(cfg.num_classes, (train_batch,), device=device, generator=g)
    stats = _train_step_stats(model, lambda: process.training_loss(model, counts, labels)["loss"], device, repeats,
                              peak)
    model.eval()
    sample_labels = torch.arange(sample_batch, device=device) % cfg.num_classes

    def sample() -> torch.Tensor:
        with _autocast(device):
            return process.sample(model, sample_labels, steps=SAMPLING_STEPS, top_p=0.8, guidance=guidance,
                                  generator=torch.Generator(device=device).manual_seed(1))

    out = sample()
    assert bool((out.sum(1) == cfg.total).all()), "FSDD sample broke the fixed sum"
    sample_s = best_time(sample, device, max(1, repeats - 1), warmup=0)
    return {"params": count_parameters(model), "train_batch": train_batch, **stats,
            "sampling": {"steps": SAMPLING_STEPS, "batch": sample_batch, "guidance": guidance, "seconds": sample_s,
                         "samples_per_s": sample_batch / sample_s, "seconds_per_step": sample_s / SAMPLING_STEPS}}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(tiny: bool, device: torch.device, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    peak, peak_what = measured_peak_flops(device, tiny)
    if tiny:
        tok_cfg = TokenizerConfig.preset("tiny")
        den_cfg = DenoiserConfig.preset("tiny", codebook_size=tok_cfg.codebook_size, total=tok_cfg.num_tokens)
        tok_batch, tok_train, den_train, sample_batch = 8, 8, 8, 8
    else:
        tok_cfg = TokenizerConfig.preset("paper")
        den_cfg = DenoiserConfig.preset("S", codebook_size=tok_cfg.codebook_size, total=tok_cfg.num_tokens)
        tok_batch, tok_train, den_train, sample_batch = 64, 32, 64, 64
    guidance = FSDDConfig.preset("paper").guidance
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "tiny": tiny, "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "peak_tflops": peak / 1e12, "peak_measured_with": peak_what,
        "tokenizer": {"preset": "tiny" if tiny else "paper",
                      **bench_tokenizer(tok_cfg, tok_batch, tok_train, device, repeats, peak)},
        "denoiser": {"preset": "tiny" if tiny else "S", "codebook_size": den_cfg.codebook_size,
                     "total": den_cfg.total,
                     **bench_denoiser(den_cfg, den_train, sample_batch, device, repeats, peak, guidance)},
    }
    result["total_seconds"] = time.perf_counter() - t0
    return result


def to_markdown(r: dict[str, Any]) -> str:
    t, d = r["tokenizer"], r["denoiser"]
    s = d["sampling"]
    return "\n".join([
        f"# bench_gpu ({'tiny presets' if r['tiny'] else 'paper presets'})", "",
        f"{r['date']} on {r['device']}, torch {r['torch']}, autocast {r['autocast']}; measured peak "
        f"{r['peak_tflops']:.4g} TFLOP/s ({r['peak_measured_with']}); total {r['total_seconds']:.1f} s.", "",
        "| model | params | encode img/s | decode img/s | train step (s) | TFLOP / step | MFU |",
        "|---|---|---|---|---|---|---|",
        f"| tokenizer ({t['preset']}, B={t['batch']}, train B={t['train_batch']}) | {t['params']:,} | "
        f"{t['encode_images_per_s']:.1f} | {t['decode_images_per_s']:.1f} | {t['train_step_s']:.4g} | "
        f"{t['train_step_tflop']:.4g} | {t['mfu']:.1%} |",
        f"| CountDiT ({d['preset']}, C={d['codebook_size']}, M={d['total']}, train B={d['train_batch']}) | "
        f"{d['params']:,} | - | - | {d['train_step_s']:.4g} | {d['train_step_tflop']:.4g} | {d['mfu']:.1%} |", "",
        f"FSDD sampling: {s['steps']} steps, B={s['batch']}, guidance {s['guidance']}: {s['seconds']:.3f} s "
        f"({s['samples_per_s']:.1f} samples/s, {s['seconds_per_step'] * 1000:.1f} ms/step).", ""])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny presets on the CPU (a smoke run, seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write bench_gpu.json and bench_gpu.md here")
    parser.add_argument("--device", default=None, help="default: cpu with --tiny, else cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    result = run(args.tiny, device, args.repeats)
    md = to_markdown(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.json").write_text(json.dumps(result, indent=1))
        (args.out / "bench_gpu.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
