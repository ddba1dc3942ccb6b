"""Issue #18: an interrupted `dvc repro` picks up where it stopped.

A copy of the project in a temporary folder (dvc.yaml, notebooks, tokenset; tests/smoke_params.yaml with a small
ImageFolder, one worker and a longer, often checkpointed training) runs the tokenizer stage with `dvc repro`, which
is SIGKILLed with its whole process group once the `set` arm has a checkpoint. The rerun must continue that arm at
its saved step (the checkpoint folder is `persist: true` in dvc.yaml, and `Trainer.resume` says where it continues),
finish the stage, and give the same metrics and weights as an uninterrupted run (same thread count: resume is
bit-identical on CPU).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tokenset import data
from tokenset.checkpoint import load_checkpoint
from tokenset.config import load_params
from tests.helpers import write_image_folder

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGE = "tokenizer"
STEPS, CKPT_EVERY, LOG_EVERY = 300, 5, 10  # ~5 s of training per arm at one thread: the kill lands mid-run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "dvc").is_file() or not (BIN / "papermill").is_file(),
                       reason="dvc and papermill are installed next to this Python (make setup)"),
]


def _project(tmp: Path) -> tuple[Path, dict[str, str]]:
    """The pipeline's files in ``tmp/project``, smoke parameters on 24 + 8 images of 32 px, prepared data and an
    initialised DVC repository; returns the folder and the environment to run dvc in (one torch thread)."""
    root = tmp / "project"
    root.mkdir()
    for name in ("tokenset", "notebooks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    write_image_folder(root / "data", 32, seed=0, size=32)  # data/train/{a,b}/*.png; data/prepared is the stage dep
    params = yaml.safe_load((REPO / "tests" / "smoke_params.yaml").read_text())
    params["data"] = {"name": "imagefolder", "root": str(root / "data"), "image_size": 32, "val_fraction": 0.25,
                      "seed": 0}
    params["train"].update(workers=1, steps=STEPS, ckpt_every=CKPT_EVERY, log_every=LOG_EVERY, batch_size=8,
                           val_limit=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data.prepare(load_params(root / "params.yaml", "data"))  # what the data stage does, without its notebook
    (root / "results" / "notebooks").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(root),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    return root, env


def _repro(root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "dvc"), "repro", "--single-item", *extra, STAGE], cwd=root, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, f"dvc repro {STAGE} failed:\n{done.stdout[-3000:]}"
    return done


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (the Jupyter kernel among them: it runs in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # the process ended while we looked
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_once_checkpointed(root: Path, env: dict[str, str], ckpt: Path) -> int:
    """Start `dvc repro` in a new process group, SIGKILL the group as soon as ``ckpt`` exists, then wait until the
    processes it started are gone (the kernel, in its own session, notices its parent's death within a second).
    Returns the step of the checkpoint that existed at the kill."""
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "--single-item", STAGE], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.is_file():
            assert proc.poll() is None, f"dvc repro ended before the first checkpoint:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        below = _descendants(proc.pid)
        at_kill = load_checkpoint(ckpt)["step"]
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in below):
        assert time.monotonic() < deadline, f"processes of the killed run still alive after 30 s: {below}"
        time.sleep(0.1)
    return at_kill


def _outputs_text(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c["outputs"])


TIMING = ("wall_time_s", "step_time_s")  # seconds measured on the clock: the only fields that may differ


def _without_timing(obj):
    """``obj`` (the stage's metrics.json) with every timing field dropped, at any depth."""
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not k.startswith(TIMING)}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _log_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k not in ("elapsed_s", "eval_s")} for row in csv.DictReader(fh)]


def test_interrupted_repro_resumes_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    root, env = _project(tmp_path)
    ckpt_dir = root / "data" / "checkpoints" / "tokenizer"
    ckpt = ckpt_dir / "set" / "checkpoint.pt"

    t0 = time.monotonic()
    at_kill = _kill_once_checkpointed(root, env, ckpt)
    saved = load_checkpoint(ckpt)["step"]
    print(f"killed with a checkpoint at step {at_kill}; the last one, once its processes were gone: step {saved} "
          f"({time.monotonic() - t0:.1f} s)")
    assert 0 < saved < STEPS and saved % CKPT_EVERY == 0
    assert not (root / "results" / "tokenizer" / "metrics.json").exists()  # the stage did not finish

    # (2) the rerun completes the stage ...
    t0 = time.monotonic()
    _repro(root, env)
    print(f"resumed run: {time.monotonic() - t0:.1f} s")
    assert "tokenizer" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    # (1) ... continuing the `set` arm at the step its checkpoint holds (the notebook's output is the stage's log)
    said = _outputs_text(root / "results" / "notebooks" / "02_tokenizer.ipynb")
    about = [line for line in said.splitlines() if "checkpoint.pt" in line]  # what the trainer said, if anything
    assert f"set/checkpoint.pt: resuming stage 1 at step {saved} of {STEPS} (same configuration)" in said, about
    resumed = json.loads((root / "results" / "tokenizer" / "metrics.json").read_text())
    resumed_log = _log_rows(root / "results" / "tokenizer" / "log_set.csv")
    resumed_ema = load_checkpoint(ckpt)["ema"]
    assert {run["arm"]: run["steps"] for run in resumed["runs"]} == {"set": STEPS, "ordered": STEPS}

    # (3) an uninterrupted run from scratch gives the same metrics, log and weights
    shutil.rmtree(ckpt_dir)
    t0 = time.monotonic()
    _repro(root, env, "--force")
    print(f"uninterrupted run: {time.monotonic() - t0:.1f} s")
    assert "resuming" not in _outputs_text(root / "results" / "notebooks" / "02_tokenizer.ipynb")
    reference = json.loads((root / "results" / "tokenizer" / "metrics.json").read_text())
    assert _without_timing(resumed) == _without_timing(reference)
    assert resumed_log == _log_rows(root / "results" / "tokenizer" / "log_set.csv")
    reference_ema = load_checkpoint(ckpt)["ema"]
    assert all(torch.equal(resumed_ema[k], reference_ema[k]) for k in reference_ema)
