"""tokenset.parallel: jobs in worker processes give what the same jobs give one after another."""

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokenset import parallel
from tokenset.baselines import matching
from tokenset.checkpoint import load_checkpoint
from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.train import fit_tokenizer

TOK = TokenizerConfig.preset("tiny")
TRAIN = TrainConfig.preset("tiny", steps=6, batch_size=8, log_every=3, ckpt_every=6)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, TOK.image_size, TOK.image_size), generator=g, dtype=torch.uint8)


def _jobs(root, **extra):
    train, val = _images(32, 0), _images(8, 1)
    arms = {"set": TOK, "ordered": TOK.replace(ordered=True),
            "hungarian": TOK.replace(decoder_input="hungarian")}
    return {arm: dict(tok_cfg=cfg, train_cfg=TRAIN, train_images=train, val_images=val, out_dir=root / arm,
                      progress=False, plot=False,
                      on_log=matching.InstabilityProbe(val[:4]) if arm == "hungarian" else None, **extra)
            for arm, cfg in arms.items()}


def test_two_workers_match_a_sequential_loop(tmp_path):
    # one thread per job either way: the workers must reproduce the loop exactly, weights and metrics
    sequential = parallel.run_jobs(fit_tokenizer, _jobs(tmp_path / "seq"), workers=1, verbose=False)
    spawned = parallel.run_jobs(fit_tokenizer, _jobs(tmp_path / "par"), workers=2, threads=1, verbose=False)
    assert list(spawned) == ["set", "ordered", "hungarian"]  # the order of the jobs, not of completion
    for arm in sequential:
        a, b = sequential[arm], spawned[arm]
        assert a["steps"] == b["steps"] == TRAIN.steps
        assert a["val_psnr"] == b["val_psnr"] and math.isfinite(a["val_psnr"])
        wa = load_checkpoint(tmp_path / "seq" / arm / "checkpoint.pt")["ema"]
        wb = load_checkpoint(tmp_path / "par" / arm / "checkpoint.pt")["ema"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the matching arm's probe ran in its worker: its values are in that arm's log
    log = (tmp_path / "par" / "hungarian" / "log.csv").read_text()
    assert "match_changed" in log.splitlines()[0]


def test_a_failing_job_is_named(tmp_path):
    jobs = _jobs(tmp_path)
    jobs["ordered"]["val_images"] = torch.zeros(4, 3, 7, 7, dtype=torch.uint8)  # wrong image size
    with pytest.raises(parallel.JobError, match=r"job 'ordered' failed: ValueError: .*val_images"):
        parallel.run_jobs(fit_tokenizer, jobs, workers=2, threads=1, verbose=False)
    with pytest.raises(parallel.JobError, match=r"job 'ordered' failed"):
        parallel.run_jobs(fit_tokenizer, jobs, workers=1, verbose=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(workers=0), r"workers: expected an integer >= 1, got 0"),
    (dict(workers=2, threads=-1), r"threads: expected an integer >= 0"),
    (dict(workers=2, fn=lambda **kw: kw), r"cannot be sent to a worker process"),
    (dict(workers=2, jobs=[1, 2]), r"jobs: expected a mapping"),
])
def test_bad_arguments(kwargs, message):
    args = dict(fn=fit_tokenizer, jobs={"a": {}, "b": {}}, verbose=False) | kwargs
    with pytest.raises(ValueError, match=message):
        parallel.run_jobs(**args)


def test_job_threads_split_the_cores():
    torch.set_num_threads(4)
    assert parallel.job_threads(2) == 2 and parallel.job_threads(3) == 1 and parallel.job_threads(8) == 1
    assert parallel.job_threads(2, threads=3) == 3


def test_train_config_workers():
    assert TrainConfig.preset("tiny").workers == 1 and "workers" not in TrainConfig.preset("tiny").to_dict()
    with pytest.raises(ValueError, match="workers"):
        TrainConfig.preset("tiny", workers=0)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and "spawn_main" in (stat.parent / "cmdline").read_text():
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_the_parent_is_killed():
    # a killed notebook kernel must not leave its workers training on
    script = ("import subprocess; from tokenset.parallel import run_jobs; "
              "run_jobs(subprocess.call, {0: dict(args=['sleep', '120']), 1: dict(args=['sleep', '120'])}, "
              "workers=2, threads=1)")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        time.sleep(1.0)  # let them reach the job
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, "workers outlived their parent"
        time.sleep(0.2)


def test_a_failure_stops_the_other_workers():
    # job 'bad' fails at once; the running 'slow' job must be stopped, not waited for
    jobs = {"slow": dict(args=["sleep", "40"]), "bad": dict(args=["/nonexistent/tokenset-no-such-binary"])}
    t0 = time.monotonic()
    with pytest.raises(parallel.JobError, match=r"job 'bad' failed: FileNotFoundError"):
        parallel.run_jobs(subprocess.call, jobs, workers=2, threads=1, verbose=False)
    assert time.monotonic() - t0 < 30  # waiting for 'slow' would take 40 s


def test_one_job_with_two_workers_still_runs_in_a_worker(tmp_path):
    # the thread count of a job must not depend on how many jobs there are: this process runs 1 thread (conftest),
    # so a job run here instead of in a worker would report 1
    assert torch.get_num_threads() == 1
    out = parallel.run_jobs(torch.get_num_threads, {"only": {}}, workers=2, threads=2, verbose=False)
    assert out == {"only": 2}
