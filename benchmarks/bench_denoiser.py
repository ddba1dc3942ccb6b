"""Training-step time of the FSDD count denoiser (CountDiT) for a few widths / depths, on CPU.

One step = FSDD.training_loss (t, x0, the discretised-Gaussian z_t, the model, cross-entropy) + backward + AdamW,
batch B of count vectors over C codes summing to M; the mean of --repeats steps after one warm-up step.
Used to size the `small` denoiser preset (tokenset/config_sections.py, DenoiserConfig.PRESETS).

Run: .venv/bin/python benchmarks/bench_denoiser.py [--shapes 128x4 96x3 64x3] [--codebook 512] [--total 32] [--batch 32]
     [--patches 1 4 8]
"""
from __future__ import annotations

import argparse
import time

import torch

from tokenset.config import DenoiserConfig, FSDDConfig
from tokenset.denoiser import CountDiT, count_parameters
from tokenset.fsdd import FSDD, fixed_sum_noise


def step_seconds(width: int, depth: int, codebook: int, total: int, batch: int, repeats: int,
                 patch: int = 1) -> tuple[float, int]:
    cfg = DenoiserConfig.preset("small", codebook_size=codebook, total=total, width=width, depth=depth, patch=patch)
    model = CountDiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    process = FSDD.from_config(FSDDConfig.preset("small"), codebook, total, num_classes=cfg.num_classes)
    g = torch.Generator().manual_seed(0)
    counts = fixed_sum_noise(batch, codebook, total, g)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)

    def step() -> None:
        loss = process.training_loss(model, counts, labels, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats, count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["128x4", "96x3", "64x3"], help="WIDTHxDEPTH")
    parser.add_argument("--codebook", type=int, default=512)
    parser.add_argument("--total", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches", type=int, nargs="+", default=[1], help="codebook entries per position")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, C={args.codebook}, M={args.total}, B={args.batch}, "
          f"load average {open('/proc/loadavg').read().split()[0]}")
    print("| width x depth | patch | parameters | s per training step |\n|---|---|---|---|")
    for shape in args.shapes:
        width, _, depth = shape.partition("x")
        for patch in args.patches:
            seconds, params = step_seconds(int(width), int(depth), args.codebook, args.total, args.batch,
                                           args.repeats, patch)
            print(f"| {shape} | {patch} | {params:,} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
