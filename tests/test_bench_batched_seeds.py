"""benchmarks/bench_batched_seeds.py runs at tiny sizes; its batched (vmap) step matches the sequential steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("formulation", [
    [],  # the defaults: written-out attention under vmap, the pixel head once per seed outside vmap
    ["--attention", "sdpa", "--head", "vmap", "--grad-mode", "func"],  # everything under vmap, vmap(grad)
])
def test_bench_batched_seeds_matches_sequential(tmp_path, formulation):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # the conv pixel head (not tiny's linear one), so the batched convolutions are checked too
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_batched_seeds.py"),
                           "--preset", "tiny:pixel_head=conv", "--seeds", "2", "--steps", "1", "--warmup", "0",
                           "--threads", "1", *formulation],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout

    def value(label: str) -> float:
        found = re.search(re.escape(label) + r": ([-+.\de]+)", out)
        assert found, f"{label!r} not printed:\n{out}"
        return float(found.group(1))

    loss = float(re.search(r"loss ~([\d.]+)", out).group(1))
    assert 0.01 < loss < 10  # a real reconstruction loss, not zero or nan
    assert value("pure step vs SetTokenizer.forward, max |loss diff|") < 1e-5
    assert value("batched vs sequential, max |loss diff| step 1") < 1e-5
    assert value("batched vs sequential, max |grad diff| step 1") < 1e-5
    assert value("batched vs sequential, max |loss diff| step 2") < 1e-4
    rows = dict(re.findall(r"^\| (sequential real|sequential pure|batched) \| ([\d.]+) \|", out, flags=re.M))
    assert sorted(rows) == ["batched", "sequential pure", "sequential real"]
    assert all(float(v) > 0 for v in rows.values())
    assert re.search(r"ratio sequential / batched \(medians\): real [\d.]+x, pure [\d.]+x", out)
