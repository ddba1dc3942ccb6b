"""FSDD sampling cost per step: the model's time vs everything else, on CPU (issue: Performance).

For B = 64, M = 128 and C in {256, 1024, 4096}:
- one sampling step with a calibrated stand-in model (a random linear layer over count + position embeddings whose
  bias is the Poisson(M / C) log-pmf, so most positions are confident about count 0 as a trained model is),
  guidance off (g = 1) and on (g = 2, one model call on 2B rows): model time vs non-model time per step;
- the non-model work split into its parts (posterior + top-p, greedy on x1_hat, kernel draw, greedy on z_t);
- the same step computed the materialised way (softmax tensors, full sort for top-p, the (B, C, M + 1)
  discretised Gaussian, greedy_adjust on materialised probabilities), which is what the official code does;
- greedy_adjust alone (materialised probabilities vs closed-form Gaussian gains);
- peak memory: the peak RSS of a fresh process during one sample() call above its RSS before the call (torch's
  allocations are not seen by tracemalloc, so RSS is the honest measure), next to the size of the model's logits.
Optionally (--countdit) the forward time of tokenset.denoiser.CountDiT (preset tiny at C = 256 and 1024, and
preset small at C = 512, M = 64, the small tokenizer's sizes) to put the non-model time in proportion.

Run: .venv/bin/python benchmarks/bench_fsdd.py [--threads N] [--steps S] [--countdit]
The machine's load average is printed: other processes on the 2 cores inflate every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
from torch import nn

from tokenset import fsdd as F
from tokenset.config import SigmaSchedule


class StandIn(nn.Module):
    """logits = tanh(count_emb[z] + pos_emb) @ W + poisson_log_pmf(M / C) + label bias: (B, C, M + 1)."""

    def __init__(self, size: int, total: int, num_classes: int = 10, width: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.count = nn.Parameter(torch.randn(total + 1, width, generator=g))
        self.pos = nn.Parameter(torch.randn(size, width, generator=g))
        self.label = nn.Parameter(torch.randn(num_classes + 1, total + 1, generator=g) * 0.1)
        self.w = nn.Parameter(torch.randn(width, total + 1, generator=g) * 0.3)
        lam = total / size
        k = torch.arange(total + 1, dtype=torch.float64)
        self.register_buffer("bias", (k * math.log(lam) - lam - torch.lgamma(k + 1)).float())

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.count[z] + self.pos)  # (B, C, width)
        out = h @ self.w  # (B, C, M + 1)
        out += self.bias
        out += self.label[labels][:, None]
        return out


class Timed:
    """Wraps a model callable and accumulates the seconds spent inside it."""

    def __init__(self, model):
        self.model, self.seconds, self.calls = model, 0.0, 0

    def __call__(self, z, t, labels):
        start = time.perf_counter()
        out = self.model(z, t, labels)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def sampler_step_times(size: int, total: int, batch: int, guidance: float, steps: int) -> tuple[float, float]:
    """(model seconds, non-model seconds) per sampling step, medians over 3 runs of `steps` steps."""
    model = Timed(StandIn(size, total).eval())
    fsdd = F.FSDD(size, total, num_classes=10)
    labels = torch.arange(batch) % 10
    results = []
    for run in range(4):
        model.seconds = 0.0
        start = time.perf_counter()
        fsdd.sample(model, labels, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(run))
        total_s = time.perf_counter() - start
        if run:  # the first run warms up
            results.append((model.seconds / steps, (total_s - model.seconds) / steps))
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


@torch.no_grad()
def breakdown(size: int, total: int, batch: int, guidance: float, repeats: int) -> dict[str, float]:
    """Seconds of each part of one step's non-model work (at t = 0.48 -> 0.52), and of the materialised step."""
    g = torch.Generator().manual_seed(0)
    model = StandIn(size, total).eval()
    fsdd = F.FSDD(size, total, num_classes=10)
    labels = torch.arange(batch) % 10
    z = F.fixed_sum_noise(batch, size, total, g)
    t, t_next = 0.48, 0.52
    tt = torch.full((batch,), t)
    probs_buf = torch.empty(batch, size, total + 1)
    posterior = fsdd._posterior(model, z, tt, labels, guidance, probs_buf)
    u = torch.rand(batch, size, generator=g)
    out: dict[str, float] = {}
    flat = [x.reshape(-1, total + 1) for x in (posterior.cond, posterior.uncond) if x is not None]
    scratch = torch.empty_like(flat[0])

    def softmax_and_guidance():  # the part the official code does inside its model (forward_with_cfg)
        q = F._softmax_into(flat[0], probs_buf.view(-1, total + 1))
        if len(flat) == 2:
            torch.lerp(F._softmax_into(flat[1], scratch), q, guidance, out=q).clamp_(min=0)

    out["softmax (+ CFG mix)"] = median_time(softmax_and_guidance, repeats)
    out["posterior + top-p"] = median_time(lambda: posterior.draw(0.8, u), repeats)
    x1 = posterior.draw(0.8, u)
    out["greedy on x1_hat"] = median_time(lambda: F._greedy_rounds(x1, posterior.prob_at, total, True, g), repeats)
    x1 = F._greedy_rounds(x1, posterior.prob_at, total, True, g).float()
    x0_hat = (z.float() - t * x1) / (1 - t)
    mean = t_next * x1 + (1 - t_next) * x0_hat
    sigma = (x0_hat - x1).abs() * (0.25 * F.sigma_scale(SigmaSchedule.SIGMOID, t_next)) + F.SIGMA_EPS
    kernel = F._GaussianKernel(mean, sigma, total)
    out["kernel draw"] = median_time(lambda: kernel.evaluate(u), repeats)
    zt = kernel.evaluate(u)
    out["greedy on z_t"] = median_time(
        lambda: F._greedy_rounds(zt, kernel.prob_at, total, True, g), repeats)

    # the materialised step (the official code's way, with this module's reference functions)
    if guidance == 1.0:
        logits = model(z, tt, labels)
        make_probs = lambda: torch.softmax(logits, -1)  # noqa: E731
    else:
        both = model(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([labels, torch.full_like(labels, 10)]))
        make_probs = lambda: F.classifier_free_guidance(both[:batch], both[batch:], guidance)  # noqa: E731

    def materialised_step():
        probs = make_probs()
        x1m = F.greedy_adjust(F.top_p_sample(probs, 0.8, g), probs, total, random_ties=True, generator=g)
        x1f = x1m.float()
        x0h = (z.float() - t * x1f) / (1 - t)
        pg = F.discretised_gaussian(t_next * x1f + (1 - t_next) * x0h, (x0h - x1f).abs() * 0.25 + 1e-6, total)
        zm = torch.multinomial(pg.view(-1, total + 1), 1).view(batch, size)
        return F.greedy_adjust(zm, pg, total, random_ties=True, generator=g)

    out["materialised step (official way)"] = median_time(materialised_step, 1)
    return out


@torch.no_grad()
def greedy_alone(size: int, total: int, batch: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    mean = F.fixed_sum_noise(batch, size, total, g).float() + torch.randn(batch, size, generator=g) * 0.3
    sigma = torch.rand(batch, size, generator=g) * 0.5
    z = F.sample_discretised_gaussian(mean, sigma, total, g)  # sums off by ~ +-sqrt(C)/2
    probs = F.discretised_gaussian(mean, sigma, total)
    return {
        "greedy_adjust(z, probs)": median_time(lambda: F.greedy_adjust(z, probs, total), repeats),
        "greedy_adjust_gaussian": median_time(lambda: F.greedy_adjust_gaussian(z, mean, sigma, total), repeats),
        "mean |deficit|": float((z.sum(1) - total).abs().float().mean()),
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def child_peak_memory(size: int, total: int, batch: int, guidance: float, steps: int) -> None:
    """Runs in a fresh process: prints the peak RSS above the RSS before one sample() call (MiB), polled every
    millisecond by a thread (glibc may keep freed memory, so this is an upper bound of what sample() holds)."""
    model = StandIn(size, total).eval()
    fsdd = F.FSDD(size, total, num_classes=10)
    labels = torch.arange(batch) % 10
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    watcher = threading.Thread(target=poll)
    watcher.start()
    with torch.no_grad():
        fsdd.sample(model, labels, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(0))
    done.set()
    watcher.join()
    logits_mib = (2 if guidance != 1.0 else 1) * batch * size * (total + 1) * 4 / 2**20
    print(json.dumps({"peak_growth_mib": max(peak[0], _rss_mib()) - before, "logits_mib": logits_mib}))


def peak_memory(size: int, total: int, batch: int, guidance: float, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), "--total", str(total), "--batch", str(batch),
           "--guidance", str(guidance), "--steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def countdit_forward(size: int, total: int, batch: int, preset: str) -> float:
    from tokenset.config import DenoiserConfig
    from tokenset.denoiser import CountDiT

    model = CountDiT(DenoiserConfig.preset(preset, codebook_size=size, total=total)).eval()
    z = F.fixed_sum_noise(batch, size, total, torch.Generator().manual_seed(0))
    t, labels = torch.full((batch,), 0.5), torch.arange(batch) % 10
    with torch.no_grad():
        return median_time(lambda: model(z, t, labels), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--total", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--guidance", type=float, default=2.0, help="(child mode only)")
    parser.add_argument("--countdit", action="store_true")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child_peak_memory(args.child, args.total, args.batch, args.guidance, args.steps)
        return

    b, m = args.batch, args.total
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; B={b} M={m}; times are ms per sampling step")
    print()
    print(f"{'C':>5} {'g':>4} | {'model':>8} {'non-model':>10} {'share':>6} | {'materialised':>12} {'speed-up':>8} | "
          f"{'peak RSS growth':>15} {'(logits)':>9}")
    parts = {}
    for size in args.sizes:
        for guidance in (1.0, 2.0):
            model_s, rest_s = sampler_step_times(size, m, b, guidance, args.steps)
            bd = breakdown(size, m, b, guidance, args.repeats)
            parts[(size, guidance)] = bd
            mat = bd["materialised step (official way)"]
            mem = peak_memory(size, m, b, guidance, 2, args.threads)
            print(f"{size:>5} {guidance:>4.1f} | {model_s * 1e3:>8.1f} {rest_s * 1e3:>10.1f} "
                  f"{rest_s / (rest_s + model_s):>6.0%} | {mat * 1e3:>12.1f} {mat / rest_s:>7.1f}x | "
                  f"{mem['peak_growth_mib']:>11.0f} MiB {mem['logits_mib']:>5.0f} MiB")
    print()
    print("non-model work per step, by part (ms; 'posterior + top-p' includes 'softmax (+ CFG mix)'):")
    names = [k for k in next(iter(parts.values())) if not k.startswith("materialised")]
    print(f"{'C':>5} {'g':>4} | " + " | ".join(f"{n:>20}" for n in names))
    for (size, guidance), bd in parts.items():
        print(f"{size:>5} {guidance:>4.1f} | " + " | ".join(f"{bd[n] * 1e3:>20.1f}" for n in names))
    print()
    print("greedy adjustment alone (ms), z drawn from a discretised Gaussian around a fixed-sum vector:")
    for size in args.sizes:
        ga = greedy_alone(size, m, b, args.repeats)
        print(f"  C={size:>5}: greedy_adjust(z, probs) {ga['greedy_adjust(z, probs)'] * 1e3:7.1f}   "
              f"greedy_adjust_gaussian {ga['greedy_adjust_gaussian'] * 1e3:7.1f}   "
              f"(mean |deficit| {ga['mean |deficit|']:.1f})")
    if args.countdit:
        print()
        print("CountDiT forward vs this module's non-model work per step (g = 1, ms; stand-in model for the latter):")
        for size, total, preset in ((256, m, "tiny"), (1024, m, "tiny"), (512, 64, "small")):
            model_s = countdit_forward(size, total, b, preset)
            rest_s = sampler_step_times(size, total, b, 1.0, args.steps)[1]
            print(f"  preset {preset:5s} C={size:>5} M={total:>3}: model {model_s * 1e3:9.1f}   non-model "
                  f"{rest_s * 1e3:7.1f}   non-model share {rest_s / (rest_s + model_s):6.1%}")


if __name__ == "__main__":
    main()
