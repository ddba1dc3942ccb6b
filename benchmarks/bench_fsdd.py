"""FSDD's own work per sampling step on CPU, against the official way re-implemented in the same process (#19).

For B = 64, M = 128 and C in --sizes (default 1024 4096), at one step t = 0.48 -> 0.52 with the model's output
fixed (the model call itself is not timed), three workloads, each as "ours vs official, ratio":
- stand-in: a calibrated stand-in model (a random linear layer over count + position embeddings whose bias is
  the Poisson(M / C) log-pmf, so most positions are confident about count 0 as a trained model is), guidance
  off (g = 1) and on (g = 2: both halves of one model call on 2B rows, mixed on probabilities);
- peaked: logits -(k - x1)^2 over k = 0..M at a realistic x1 (Dirichlet(0.05) over C, scaled to M, rounded to
  sum M): no position is confident enough for a one-class nucleus (p(x1) is 0.56 to 0.72);
- greedy: greedy_adjust with materialised probabilities (B, C, M + 1) on a realistic t = 0.5 forward state: the
  mean halfway between such an x1 and uniform noise rounded to sum M, sigma = |x1 - x0| / 4, z drawn from the
  discretised Gaussian (mean |M - sum| about 5), against the official one-round rule; next to it, one pass
  over the probabilities (aminmax, the caller's threads): what checking the whole input would add.
"Ours" is FSDD._step, the sampler's own code after the model call (posterior and top-p, greedy adjustment of
x1_hat, kernel draw, greedy adjustment of z_t). "Official" re-implements what flows.py does in a step, op for
op (no code copied): softmax (inside the official model), a full sort for top-p, a scatter back, multinomial,
its greedy_adjust (two full sorts, one round), the (B, C, M + 1) Gaussian pdf, multinomial, greedy_adjust; the
support is 0..M as ours (the official uses 0..M-1), and x1_hat is adjusted at every step as ours is (the official
adjusts it only from t = 0.65 on). Times are medians over --repeats runs of each, taken in turns.

--load N starts N single-thread busy processes beside the measurement (ended with it, also on an error or
Ctrl-C): a laptop is rarely idle, and the pipeline runs a notebook kernel, DVC and Inception beside the sampler.
--parts: ours split into its parts. --memory: the peak RSS growth of one sample() call in a fresh process.
--countdit: a real sampling run (the `small` CountDiT at the default sizes C = 512, M = 32, 25 steps): model
time vs FSDD's own time, to put the latter in proportion.

Run: .venv/bin/python benchmarks/bench_fsdd.py [--threads N] [--load N] [--parts] [--memory] [--countdit]
The machine's load average is printed before and after: other processes on the cores inflate every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tokenset import fsdd as F
from tokenset.fsdd import adjust as fsdd_adjust
from tokenset.fsdd import checks as fsdd_checks
from tokenset.fsdd import kernel as fsdd_kernel
from tokenset.fsdd import posterior as fsdd_posterior
from tokenset.config import SigmaSchedule

TOP_P = 0.8
T, T_NEXT = 0.48, 0.52


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


def paired_times(ours: Callable[[], object], official: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of `repeats` timings of each, taken in turns (ours, official, ours, ...) after one warm-up of
    each, so that a change in the machine's load during the run hits both alike."""
    ours(), official()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (official, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ============================================================================================ load


@contextmanager
def competing_load(n: int) -> Iterator[None]:
    """Runs n single-thread busy processes for the duration of the block; they end with it, whatever happens
    (an exception, Ctrl-C, or SIGTERM to this process, which is turned into an exception)."""
    if n < 0:
        raise ValueError(f"--load must be >= 0, got {n}")
    procs: list[subprocess.Popen] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        signal.signal(signal.SIGTERM, previous)


# ============================================================================================ the official way


def official_greedy_adjust(z: torch.Tensor, probs: torch.Tensor, total: int) -> torch.Tensor:
    """The official rule (flows.greedy_adjust), re-implemented with the same operations: gains at z - 1 and
    z + 1 gathered from probs (B, C, K), both gain vectors fully sorted, the first |d| positions of each row
    moved by one unit (at most C: a single round), then clamped to 0..K-1. z: (B, C) int64."""
    batch, size, classes = probs.shape
    d = total - z.sum(1)
    p0 = probs.gather(2, z[..., None]).squeeze(-1)
    p_prev = probs.gather(2, (z - 1).clamp(min=0)[..., None]).squeeze(-1)
    p_next = probs.gather(2, (z + 1).clamp(max=classes - 1)[..., None]).squeeze(-1)
    dec = torch.where(z > 0, p_prev - p0, torch.full_like(p0, -math.inf))
    inc = torch.where(z < classes - 1, p_next - p0, torch.full_like(p0, -math.inf))
    order_dec = dec.sort(1, descending=True).indices
    order_inc = inc.sort(1, descending=True).indices
    out = z.clone()
    for rows_mask, order, sign in ((d < 0, order_dec, -1), (d > 0, order_inc, 1)):
        if not bool(rows_mask.any()):
            continue
        rows = rows_mask.nonzero().squeeze(1)
        need = d[rows].abs()
        width = min(int(need.max()), size)
        keep = torch.arange(width)[None, :] < need[:, None]
        out[rows[:, None].expand(-1, width)[keep], order[rows, :width][keep]] += sign
    return out.clamp(0, classes - 1)


def official_step(probs: torch.Tensor, z: torch.Tensor, total: int, f: float) -> torch.Tensor:
    """One step of the official sampler from p(x1 | z_t): probs (B, C, M + 1) -> z_t' (B, C) int64."""
    batch, size, classes = probs.shape
    sorted_p, sorted_i = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) <= TOP_P
    keep[..., 1:] = keep[..., :-1].clone()
    keep[..., 0] = True
    sorted_p = sorted_p * keep
    sorted_p /= sorted_p.sum(-1, keepdim=True)
    nucleus = torch.zeros_like(probs).scatter_(-1, sorted_i, sorted_p)
    x1 = torch.multinomial(nucleus.view(-1, classes), 1).view(batch, size)
    x1 = official_greedy_adjust(x1, probs, total).float()
    x0_hat = (z.float() - T * x1) / (1 - T)
    mean = (T_NEXT * x1 + (1 - T_NEXT) * x0_hat)[..., None]
    sigma = ((x0_hat - x1).abs() / 4 * f + 1e-6)[..., None]
    k = torch.arange(classes, dtype=torch.float32).view(1, 1, classes)
    pdf = torch.exp(-0.5 * ((k - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    pdf = pdf / pdf.sum(-1, keepdim=True)
    zn = torch.multinomial(pdf.view(-1, classes), 1).view(batch, size)
    return official_greedy_adjust(zn, pdf, total)


# ============================================================================================ workloads


def realistic_x1(batch: int, size: int, total: int, g: torch.Generator) -> torch.Tensor:
    """Data-like count vectors: Dirichlet(0.05) over C, scaled to M, rounded to sum M. (B, C) int64."""
    gamma = torch._standard_gamma(torch.full((batch, size), 0.05, dtype=torch.float64), generator=g)
    return F.round_fixed_sum(gamma / gamma.sum(1, keepdim=True) * total, total)


class Workload:
    """A fixed model output at one step: logits (cond and, for g != 1, uncond) and the state z_t."""

    def __init__(self, name: str, size: int, total: int, batch: int, guidance: float):
        g = torch.Generator().manual_seed(0)
        self.name, self.total, self.guidance = name, total, guidance
        self.z = F.fixed_sum_noise(batch, size, total, g)  # the state at t = 0.48 (noise: its exact value
        tt = torch.full((batch,), T)  # matters little to the work)
        if name == "stand-in":
            model, labels = StandIn(size, total).eval(), torch.arange(batch) % 10
            with torch.no_grad():
                self.cond = model(self.z, tt, labels)
                self.uncond = model(self.z, tt, torch.full_like(labels, 10)) if guidance != 1.0 else None
        elif name == "peaked":
            k = torch.arange(total + 1, dtype=torch.float32)
            self.cond = -(k - realistic_x1(batch, size, total, g).float()[..., None]) ** 2
            self.uncond = None
        else:
            raise ValueError(f"unknown workload {name!r}")
        self.fsdd = F.FSDD(size, total, num_classes=10)
        self.f = F.sigma_scale(SigmaSchedule.SIGMOID, T_NEXT)

    def ours(self, g: torch.Generator) -> torch.Tensor:
        posterior = fsdd_posterior._ModelPosterior(self.cond, self.uncond, self.guidance)
        return self.fsdd._step(posterior, self.z, T, T_NEXT, TOP_P, self.f, g)[1]

    def official(self) -> torch.Tensor:
        if self.uncond is None:
            probs = torch.softmax(self.cond, -1)
        else:
            probs = F.classifier_free_guidance(self.cond, self.uncond, self.guidance)
        return official_step(probs, self.z, self.total, self.f)


def greedy_state(size: int, total: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The realistic t = 0.5 forward state: z (B, C) int64 off the sum, probs (B, C, M + 1)."""
    g = torch.Generator().manual_seed(1)
    x1 = realistic_x1(batch, size, total, g)
    x0 = F.round_fixed_sum(torch.rand(batch, size, generator=g, dtype=torch.float64), total)
    mean = (0.5 * x1 + 0.5 * x0).float()
    sigma = (x1 - x0).abs().float() / 4
    probs = F.discretised_gaussian(mean, sigma, total)
    z = torch.multinomial(probs.view(-1, total + 1), 1, generator=g).view(batch, size)
    return z, probs


@torch.no_grad()
def parts_of_ours(w: Workload, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(2)
    posterior = fsdd_posterior._ModelPosterior(w.cond, w.uncond, w.guidance)
    u = torch.rand(w.z.shape, generator=g)
    out = {"posterior + top-p": median_time(lambda: posterior.draw(TOP_P, u), repeats)}
    x1 = posterior.draw(TOP_P, u)
    rounds = fsdd_checks._one_thread(fsdd_adjust._greedy_rounds)  # as the sampler runs them (FSDD._step is under _one_thread)
    out["greedy on x1_hat"] = median_time(lambda: rounds(x1, fsdd_adjust._gains_of(posterior.prob_at), w.total, True, g),
                                          repeats)
    x1 = rounds(x1, fsdd_adjust._gains_of(posterior.prob_at), w.total, True, g).float()
    x0_hat = (w.z.float() - T * x1) / (1 - T)
    mean = T_NEXT * x1 + (1 - T_NEXT) * x0_hat
    sigma = (x0_hat - x1).abs() * (0.25 * w.f) + F.SIGMA_EPS
    kernel = fsdd_kernel._GaussianKernel(mean, sigma, w.total)
    out["kernel draw"] = median_time(lambda: kernel.evaluate(u), repeats)
    zt = kernel.evaluate(u)
    out["greedy on z_t"] = median_time(lambda: rounds(zt, fsdd_adjust._gains_of(kernel.prob_at), w.total, True, g), repeats)
    return out


# ============================================================================================ whole runs


@torch.no_grad()
def sample_split(model: nn.Module, size: int, total: int, batch: int, guidance: float, steps: int,
                 runs: int = 2) -> tuple[float, float]:
    """(model seconds, FSDD's own seconds) per sampling step of whole sample() calls, medians over `runs`."""
    timed = Timed(model)
    fsdd = F.FSDD(size, total, num_classes=10)
    labels = torch.arange(batch) % 10
    results = []
    for run in range(runs + 1):
        timed.seconds = 0.0
        start = time.perf_counter()
        fsdd.sample(timed, labels, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(run))
        total_s = time.perf_counter() - start
        if run:  # the first run warms up
            results.append((timed.seconds / steps, (total_s - timed.seconds) / steps))
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


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


def countdit_share(batch: int, steps: int) -> None:
    from tokenset.config import DenoiserConfig, FSDDConfig, TokenizerConfig
    from tokenset.denoiser import CountDiT

    tok = TokenizerConfig.preset("small")
    size, total = tok.codebook_size, tok.num_tokens
    steps = steps or FSDDConfig.preset("small").steps
    model = CountDiT(DenoiserConfig.preset("small", codebook_size=size, total=total)).eval()
    print(f"a real sampling run: CountDiT `small` at C = {size}, M = {total}, B = {batch}, {steps} steps "
          f"(ms per step):")
    for guidance in (1.0, 2.0):
        model_s, own_s = sample_split(model, size, total, batch, guidance, steps, runs=1)
        print(f"  g = {guidance:.0f}: model {model_s * 1e3:8.1f}   FSDD's own work {own_s * 1e3:7.1f}   "
              f"its share {own_s / (own_s + model_s):6.1%}")


# ============================================================================================ main


def _load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def run(args: argparse.Namespace) -> None:
    b, m = args.batch, args.total
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, --load {args.load}; B={b} M={m}; "
          f"top-p {TOP_P}, step t = {T} -> {T_NEXT}; medians of {args.repeats} runs; {_load_line()}")
    print()
    print("FSDD's own work per sampling step (ms; the model's output fixed), ours vs the official way:")
    print(f"{'workload':>10} {'C':>5} {'g':>4} | {'ours':>8} {'official':>9} {'ratio':>7}")
    workloads = []
    for size in args.sizes:
        for name, guidance in (("stand-in", 1.0), ("stand-in", 2.0), ("peaked", 1.0)):
            w = Workload(name, size, m, b, guidance)
            g = torch.Generator().manual_seed(3)
            with torch.no_grad():
                ours, official = paired_times(lambda: w.ours(g), w.official, args.repeats)
            print(f"{name:>10} {size:>5} {guidance:>4.1f} | {ours * 1e3:>8.1f} {official * 1e3:>9.1f} "
                  f"{official / ours:>6.1f}x", flush=True)
            workloads.append(w)
    print()
    print("greedy_adjust with materialised probabilities (B, C, M + 1), t = 0.5 forward state (ms). Ties: the")
    print("official breaks them by its sort's order (deterministic); ours by the lowest index (the default, also")
    print("deterministic) or uniformly at random (random_ties=True, as the sampler does: a random key per position):")
    print(f"{'C':>5} {'|d|':>5} | {'lowest':>8} {'random':>8} {'official':>9} | {'ratio':>6} {'ratio':>6} | "
          f"{'one pass over probs':>19}")
    print(f"{'':>5} {'':>5} | {'':>8} {'':>8} {'':>9} | {'lowest':>6} {'random':>6} |")
    for size in args.sizes:
        z, probs = greedy_state(size, m, b)
        g = torch.Generator().manual_seed(4)
        reps = 5 * args.repeats  # milliseconds each: more turns against the machine's noise
        lowest, official = paired_times(lambda: F.greedy_adjust(z, probs, m),
                                        lambda: official_greedy_adjust(z, probs, m), reps)
        rand, official_again = paired_times(lambda: F.greedy_adjust(z, probs, m, random_ties=True, generator=g),
                                            lambda: official_greedy_adjust(z, probs, m), reps)
        official = min(official, official_again)  # the faster of its two medians: the ratios are not flattered
        deficit = float((z.sum(1) - m).abs().float().mean())
        one_pass = median_time(lambda: torch.aminmax(probs), args.repeats)  # what a full input check would cost
        print(f"{size:>5} {deficit:>5.1f} | {lowest * 1e3:>8.1f} {rand * 1e3:>8.1f} {official * 1e3:>9.1f} | "
              f"{official / lowest:>5.1f}x {official / rand:>5.1f}x | {one_pass * 1e3:>19.1f}", flush=True)
    if args.parts:
        print()
        print("ours by part (ms):")
        for w in workloads:
            parts = parts_of_ours(w, args.repeats)
            print(f"  {w.name:>8} C={w.z.shape[1]:>5} g={w.guidance:.1f}: "
                  + "   ".join(f"{k} {v * 1e3:6.1f}" for k, v in parts.items()), flush=True)
    if args.memory:
        print()
        print("peak RSS growth of one 2-step sample() call with the stand-in (MiB), next to the logits' size:")
        for size in args.sizes:
            for guidance in (1.0, 2.0):
                mem = peak_memory(size, m, b, guidance, 2, args.threads)
                print(f"  C={size:>5} g={guidance:.1f}: {mem['peak_growth_mib']:7.0f} MiB "
                      f"(logits {mem['logits_mib']:.0f} MiB)", flush=True)
    if args.countdit:
        print()
        countdit_share(b, args.countdit_steps)
    print()
    print(f"after: {_load_line()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--total", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--load", type=int, default=0, help="single-thread busy processes run beside")
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--countdit", action="store_true")
    parser.add_argument("--countdit-steps", type=int, default=0, help="0: the small preset's steps")
    parser.add_argument("--guidance", type=float, default=2.0, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child_peak_memory(args.child, args.total, args.batch, args.guidance, args.steps)
        return
    with competing_load(args.load):
        run(args)


if __name__ == "__main__":
    main()
