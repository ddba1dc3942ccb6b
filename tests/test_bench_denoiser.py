"""benchmarks/bench_denoiser.py runs at tiny sizes and prints one table row per shape and patch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_denoiser_prints_a_row_per_shape_and_patch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_denoiser.py"), "--shapes", "16x1", "32x2",
                           "--codebook", "32", "--total", "4", "--batch", "4", "--repeats", "1", "--threads", "1",
                           "--patches", "1", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (\d+x\d+) \| (\d+) \| ([\d,]+) \| ([\d.]+) \|$", done.stdout, flags=re.M)
    assert [(r[0], r[1]) for r in rows] == [("16x1", "1"), ("16x1", "4"), ("32x2", "1"), ("32x2", "4")]
    params = [int(r[2].replace(",", "")) for r in rows]
    assert 0 < params[0] < params[2]  # the wider, deeper network has more parameters
    assert all(float(r[3]) > 0 for r in rows)
