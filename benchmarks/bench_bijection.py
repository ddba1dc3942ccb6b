"""Throughput of the dual transformation at the paper's sizes (B=256, M=128, C=4096) on CPU.

Run: .venv/bin/python benchmarks/bench_bijection.py
"""

import time

import torch

from tokenset.bijection import counts_to_set, set_to_counts


def timeit(fn, repeats: int = 50) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(batch: int = 256, num_tokens: int = 128, codebook: int = 4096) -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, codebook, (batch, num_tokens), generator=g)
    counts = set_to_counts(tokens, codebook)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={batch} M={num_tokens} C={codebook}")
    for name, fn in [("set_to_counts", lambda: set_to_counts(tokens, codebook)),
                     ("counts_to_set", lambda: counts_to_set(counts))]:
        sec = timeit(fn)
        print(f"{name:14s} {sec * 1e3:8.3f} ms/batch  {batch / sec:12,.0f} sets/s")


if __name__ == "__main__":
    main()
