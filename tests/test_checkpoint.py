"""Checkpoints: round trips, RNG states, atomic writes, corrupt files and refused pickles."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from tokenset import atomic
from tokenset import checkpoint as ckpt
from tokenset.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(4, 3, generator=g), "b": torch.zeros(3)}, "step": 7 + seed,
            "config": {"tokenizer": {"width": 32, "pixel_head": "linear", "seeds": [0, 1]}},
            "scheduler": {"last_factor": 0.5}, "rng": rng_state()}


def test_round_trip(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    assert os.listdir(tmp_path / "sub") == ["checkpoint.pt"]  # no temporary file left behind


def test_optimizer_state_is_weights_only_loadable(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", {"optimizer": opt.state_dict(), "model": model.state_dict()})
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(load_checkpoint(tmp_path / "c.pt")["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_garbage_file_is_corrupt(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_is_never_loaded(tmp_path, fraction):
    good = save_checkpoint(tmp_path / "good.pt", _state())
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_not_a_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))  # would run on unpickling


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same payload really does run under an unrestricted load (the test can fail)
    with open(path, "rb") as fh:
        torch.load(fh, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_crash_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(0))
    real_save = torch.save

    def dying_save(obj, fh):  # writes part of the file, then the process "dies"
        real_save(obj, fh)
        fh.truncate(fh.tell() // 2)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(1))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7  # the old, complete checkpoint
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_crash_before_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(0))

    def no_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError):
        save_checkpoint(path, _state(1))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_overwrite_replaces(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _state(0))
    save_checkpoint(path, _state(3))
    assert load_checkpoint(path)["step"] == 10


# --------------------------------------------------------------------------------------------- run identity


def test_fingerprint_tells_inputs_apart():
    x = torch.arange(48, dtype=torch.uint8).reshape(2, 3, 2, 4)
    assert ckpt.fingerprint(x) == ckpt.fingerprint(x.clone()) and ckpt.fingerprint(x).startswith("sha256:")
    assert ckpt.fingerprint(x) == ckpt.fingerprint(x.transpose(2, 3).contiguous().transpose(2, 3))  # layout only
    others = [x.flip(-1), x.float(), x.reshape(2, 3, 4, 2), x[:1]]
    assert len({ckpt.fingerprint(v) for v in [x, *others]}) == 5
    ds = torch.utils.data.TensorDataset(x)
    assert ckpt.fingerprint(ds) != ckpt.fingerprint(torch.utils.data.TensorDataset(x[:1]))
    with pytest.raises(ValueError, match="fingerprint: expected a tensor or a sized torch Dataset, got list"):
        ckpt.fingerprint([1, 2])


def test_config_changes_names_each_difference():
    saved = {"tokenizer": {"width": 32, "seeds": [0, 1]}, "train": {"steps": 300}}
    assert ckpt.config_changes(saved, saved) == []
    now = {"tokenizer": {"width": 64, "seeds": [0, 1]}, "train": {"steps": 300, "seed": 1}}
    assert ckpt.config_changes(saved, now) == ["tokenizer.width: 32 in the checkpoint, 64 now",
                                               "train.seed: absent in the checkpoint, 1 now"]
    assert ckpt.config_changes(None, now) == ["the checkpoint holds no configuration (got NoneType)"]
