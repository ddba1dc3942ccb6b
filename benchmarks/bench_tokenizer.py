"""Tokenizer speed on this machine: encode / decode images per second, one training step, and achieved GFLOP/s
against the measured fp32 rate of a 2048 x 2048 matmul.

    python benchmarks/bench_tokenizer.py [--presets tiny small paper] [--threads N] [--repeats 5] [--json out.json]
    python benchmarks/bench_tokenizer.py --presets small small:patch_size=4   # a preset with fields overridden
    python benchmarks/bench_tokenizer.py --presets small small:head_channels=16 --profile   # + share in convolutions

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; one
multiply-add = 2 FLOPs); the training step is forward + backward + AdamW at the preset's batch size. ``paper`` is
timed forward only at B = 1 (encode + decode), as its training step does not fit a CPU budget. A benchmark, not a
test: numbers vary with the machine and its load (other processes sharing the cores slow everything down).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.tokenizer import SetTokenizer


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls, after ``warmup`` untimed ones (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats, warmup=2) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _row(preset: str, what: str, params: float, batch: int, seconds: float, flops: int, peak: float) -> dict:
    rate = flops / seconds / 1e9
    return dict(preset=preset, what=what, params_M=params, batch=batch, seconds=seconds, images_per_s=batch / seconds,
                gflop=flops / 1e9, gflops_per_s=rate, pct_of_matmul=100 * rate / peak)


def parse_spec(spec: str) -> tuple[str, dict]:
    """"small" or "small:patch_size=4,head_channels=16" -> (preset name, TokenizerConfig overrides)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"preset {spec!r}: expected NAME or NAME:KEY=VALUE[,KEY=VALUE...]")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def conv_share(fn: Callable[[], object], calls: int = 3) -> float:
    """Share of ``fn``'s self CPU time (torch.profiler, ``calls`` calls) spent in convolution ops (forward and
    backward): what a narrower conv pixel head can save."""
    fn()
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if "conv" in e.key) / max(total, 1e-9)


def bench_preset(spec: str, repeats: int, peak: float, profile: bool = False) -> list[dict]:
    torch.manual_seed(0)
    name, overrides = parse_spec(spec)
    cfg = TokenizerConfig.preset(name, **overrides)
    model = SetTokenizer(cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = []
    if name == "paper":
        x = torch.rand(1, 3, cfg.image_size, cfg.image_size) * 2 - 1
        model.eval()
        with torch.no_grad():
            tokens = model.encode(x)
            for what, fn in (("encode B=1", lambda: model.encode(x)), ("decode B=1", lambda: model.decode(tokens))):
                flops = count_flops(fn)
                t = best_time(fn, max(1, repeats // 2))
                rows.append(_row(spec, what, params, 1, t, flops, peak))
        return rows
    batch = TrainConfig.preset(name).batch_size
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size) * 2 - 1
    model.eval()
    with torch.no_grad():
        tokens = model.encode(x)
        for what, fn in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(tokens))):
            flops = count_flops(fn)
            t = best_time(fn, repeats)
            rows.append(_row(spec, what, params, batch, t, flops, peak))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        _, out = model(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    flops = count_flops(step)
    t = best_time(step, repeats)
    rows.append(_row(spec, "train step", params, batch, t, flops, peak))
    if profile:
        rows[-1]["conv_share"] = conv_share(step)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the training step: the share of its time in convolutions")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 2048x2048 matmul: {peak:.1f} GFLOP/s")
    rows = []
    for name in args.presets:
        rows += bench_preset(name, args.repeats, peak, args.profile)
    print("| preset | what | params (M) | batch | ms | images/s | GFLOP | GFLOP/s | % of matmul | % in convolutions |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        conv = f"{100 * r['conv_share']:.0f}%" if "conv_share" in r else ""
        print(f"| {r['preset']} | {r['what']} | {r['params_M']:.2f} | {r['batch']} | {1000 * r['seconds']:.1f} | "
              f"{r['images_per_s']:.1f} | {r['gflop']:.2f} | {r['gflops_per_s']:.1f} | {r['pct_of_matmul']:.0f}% | "
              f"{conv} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"matmul_gflops": peak, "threads": torch.get_num_threads(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
