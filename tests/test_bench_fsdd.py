"""benchmarks/bench_fsdd.py runs at tiny sizes and prints a ratio for every workload and for greedy_adjust."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_fsdd_prints_every_workload_and_the_adjustment(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_fsdd.py"), "--sizes", "64", "--batch",
                           "4", "--total", "16", "--repeats", "1", "--threads", "1", "--parts"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = re.findall(r"^\s+(stand-in|peaked)\s+64\s+([\d.]+) \|\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", done.stdout,
                       flags=re.M)
    assert [(w, float(g)) for w, g, *_ in steps] == [("stand-in", 1.0), ("stand-in", 2.0), ("peaked", 1.0)]
    assert all(float(ours) > 0 and float(official) > 0 for _, _, ours, official, _ in steps)
    greedy = re.findall(r"^\s+64\s+[\d.]+ \|\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \|\s+([\d.]+)x\s+([\d.]+)x", done.stdout,
                        flags=re.M)
    assert len(greedy) == 1 and all(float(v) > 0 for v in greedy[0])
    assert "greedy on x1_hat" in done.stdout and "greedy on z_t" in done.stdout  # --parts
