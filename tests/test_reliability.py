"""Reliability (issue #7): a SIGKILLed training run resumes to its configured end; an interrupted checkpoint write
never leaves a file that gets loaded; the tiny pipeline is deterministic on CPU; it runs with networking disabled.

(The malicious-pickle refusal lives in tests/test_checkpoint.py::test_malicious_pickle_is_refused_and_not_run.)
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenset import checkpoint as ckpt_mod
from tokenset import generators
from tokenset import train as train_mod
from tokenset.checkpoint import load_checkpoint
from tokenset.config import DenoiserConfig, FSDDConfig, TokenizerConfig, TrainConfig
from tokenset.tokenizer import SetTokenizer
from tests.helpers import uint8_images, write_image_folder

REPO = Path(__file__).resolve().parents[1]
TOK = TokenizerConfig.preset("tiny")


def _log_steps(path: Path) -> list[int]:
    with path.open(newline="") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------------------------- SIGKILL and resume

STEPS, CKPT_EVERY, LOG_EVERY = 300, 5, 10


def _write_params(tmp: Path) -> Path:
    write_image_folder(tmp / "images", 32, seed=0)
    params = tmp / "params.yaml"
    params.write_text(
        f"data: {{name: imagefolder, root: {tmp / 'images'}, image_size: 16, val_fraction: 0.25, seed: 0}}\n"
        "tokenizer: {preset: tiny}\n"
        f"train: {{preset: tiny, steps: {STEPS}, batch_size: 8, ckpt_every: {CKPT_EVERY}, log_every: {LOG_EVERY},"
        " val_limit: 4}\n")
    return params


def test_sigkilled_cli_run_resumes_from_its_checkpoint_to_the_configured_end(tmp_path, monkeypatch):
    params, out = _write_params(tmp_path), tmp_path / "out"
    ckpt = out / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tokenset.train", "--params", str(params), "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.is_file():
            assert proc.poll() is None, f"training exited before its first checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = load_checkpoint(ckpt)  # whatever moment the kill came, the file on disk is a complete checkpoint
    killed_at = saved["step"]
    assert 0 < killed_at < STEPS and killed_at % CKPT_EVERY == 0
    assert not (out / "metrics.json").exists()

    starts: list[int] = []
    real_batches = train_mod.image_batches

    def spy(*args: Any, **kw: Any):
        make = real_batches(*args, **kw)
        return lambda start: (starts.append(start), make(start))[1]

    monkeypatch.setattr(train_mod, "image_batches", spy)
    metrics = train_mod.main(["--params", str(params), "--out", str(out)])
    assert starts == [killed_at]  # continued from the saved step, not from 0
    assert metrics["steps"] == STEPS and not metrics["stopped_by_budget"]
    final = load_checkpoint(ckpt)
    assert final["step"] == STEPS
    model = SetTokenizer.from_checkpoint(ckpt)
    assert model.encode(torch.zeros(1, 3, 16, 16)).shape == (1, TOK.num_tokens)
    steps = _log_steps(out / "log.csv")
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated rows from redone steps
    assert [s for s in steps if s > killed_at] == list(range(killed_at - killed_at % LOG_EVERY + LOG_EVERY,
                                                             STEPS + 1, LOG_EVERY))
    assert (out / "metrics.json").is_file()


# --------------------------------------------------------------------------------------------- interrupted writes


class _DiskFull(OSError):
    pass


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig.preset("tiny", steps=9, batch_size=8, ckpt_every=3, log_every=3)
    train, val = uint8_images(32, 0), uint8_images(8, 1)
    real_save = torch.save
    calls = {"n": 0}

    def half_written_save(obj: Any, fh: Any, *args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 6): write half of it, then the "disk" fails
            import io

            buf = io.BytesIO()
            real_save(obj, buf, *args, **kw)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise _DiskFull("no space left on device")
        real_save(obj, fh, *args, **kw)

    monkeypatch.setattr(ckpt_mod.torch, "save", half_written_save)
    with pytest.raises(_DiskFull):
        train_mod.fit_tokenizer(TOK, cfg, train, val, tmp_path, progress=False, plot=False)
    monkeypatch.undo()
    path = tmp_path / "checkpoint.pt"
    first = load_checkpoint(path)
    assert first["step"] == 3  # the old, complete checkpoint: the half-written one never replaced it
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and "checkpoint" in p.name] == []
    metrics = train_mod.fit_tokenizer(TOK, cfg, train, val, tmp_path, progress=False, plot=False)
    assert metrics["steps"] == 9 and load_checkpoint(path)["step"] == 9


# --------------------------------------------------------------------------------------------- the tiny pipeline


def _pipeline(out: Path) -> dict[str, Any]:
    """fit_tokenizer (tiny) -> encode -> fit_generator('fsdd', tiny) -> generate 4 samples -> decode."""
    train, val = uint8_images(32, 0), uint8_images(8, 1)
    labels = torch.arange(32) % 2
    tok_metrics = train_mod.fit_tokenizer(TOK, TrainConfig.preset("tiny", steps=6, batch_size=8), train, val,
                                          out / "tok", progress=False, plot=False)
    tok = SetTokenizer.from_checkpoint(out / "tok" / "checkpoint.pt")
    with torch.no_grad():
        tokens = tok.encode(train.float() / 127.5 - 1)
    den = DenoiserConfig.preset("tiny", codebook_size=TOK.codebook_size, total=TOK.num_tokens, num_classes=2)
    fsdd_cfg = FSDDConfig.preset("tiny")
    gen = generators.fit_generator("fsdd", den, fsdd_cfg, TrainConfig.preset("tiny", steps=6, batch_size=8),
                                  tokens, labels, out / "gen", progress=False)
    samples = generators.generate("fsdd", gen["model"], torch.tensor([0, 1, 0, 1]), fsdd_cfg,
                                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = tok.decode(samples)
    drop = ("wall_time_s", "elapsed_s", "eval_s")
    return {"tok_metrics": {k: v for k, v in tok_metrics.items() if k not in drop}, "tokens": tokens,
            "gen_loss": gen["loss"], "samples": samples, "images": images,
            "gen_weights": {k: v.clone() for k, v in gen["model"].state_dict().items()}}


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["tok_metrics"] == b["tok_metrics"]
    assert a["gen_loss"] == b["gen_loss"]
    for key in ("tokens", "samples", "images"):
        assert torch.equal(a[key], b[key]), key
    assert a["gen_weights"].keys() == b["gen_weights"].keys()
    assert all(torch.equal(a["gen_weights"][k], b["gen_weights"][k]) for k in a["gen_weights"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict[str, Any]:
    torch.set_num_threads(1)
    return _pipeline(tmp_path_factory.mktemp("reference"))


def test_tiny_pipeline_is_deterministic(reference_run, tmp_path):
    torch.manual_seed(12345)  # the global RNG state before the run must not matter
    again = _pipeline(tmp_path)
    _assert_same(reference_run, again)
    assert again["samples"].shape == (4, TOK.num_tokens)
    assert reference_run["tok_metrics"]["steps"] == 6


def test_tiny_pipeline_runs_without_network(reference_run, tmp_path, monkeypatch):
    attempts: list[str] = []

    def refuse(name: str):
        def blocked(*args: Any, **kw: Any):
            attempts.append(name)
            raise OSError(f"network disabled in this test ({name})")
        return blocked

    monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("example.org", 80))  # the block is in force
    attempts.clear()
    offline = _pipeline(tmp_path)
    assert attempts == []  # nothing even tried to open a connection
    _assert_same(reference_run, offline)
