"""benchmarks/bench_gpu.py runs at tiny size on the CPU and writes the JSON + markdown it promises."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--tiny", "--repeats", "1",
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["tiny"] is True and result["device_type"] == "cpu" and result["device"].startswith("CPU")
    assert dt.datetime.fromisoformat(result["date"]).year >= 2024
    assert result["peak_tflops"] > 0 and "matmul" in result["peak_measured_with"]
    tok, den = result["tokenizer"], result["denoiser"]
    for key in ("encode_images_per_s", "decode_images_per_s", "train_step_s", "train_step_tflop"):
        assert tok[key] > 0, key
    for block in (tok, den):
        assert block["params"] > 0 and block["train_step_s"] > 0 and block["train_step_tflop"] > 0
        assert 0 < block["mfu"] < 1.5  # FLOPs counted, peak measured: a real fraction (timer noise aside)
    sampling = den["sampling"]
    assert sampling["steps"] == 25 and sampling["batch"] == 8 and sampling["seconds"] > 0
    assert abs(sampling["seconds_per_step"] * 25 - sampling["seconds"]) < 1e-9
    md = (tmp_path / "bench_gpu.md").read_text()
    assert result["date"] in md and result["device"] in md and "FSDD sampling: 25 steps" in md
