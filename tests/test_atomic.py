"""tokenset.atomic: every file the library writes appears whole or not at all."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from tokenset import atomic, train
from tokenset.data import prepared


def test_write_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "log.csv"
    atomic.write_text(path, "step\n1\n")
    atomic.write_text(path, "step\n2\n")
    assert path.read_text() == "step\n2\n"
    assert os.listdir(path.parent) == ["log.csv"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable like any output, not mkstemp's 0600


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = atomic.write_bytes(tmp_path / "x.bin", b"old")

    def half_then_fail(fh):
        fh.write(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic.atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_data_and_log_writers_use_it(tmp_path, monkeypatch):
    # the prepared-data npz and the training CSV log go through atomic_write (a failing rename leaves the old file)
    prepared.save_npz(tmp_path / "d.npz", {"x": np.arange(3)})
    log = train._CsvLog(tmp_path / "log.csv", truncate_after=None)
    log.append({"step": 1, "loss": 0.5})
    before = {p: p.read_bytes() for p in (tmp_path / "d.npz", tmp_path / "log.csv")}

    def no_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError):
        prepared.save_npz(tmp_path / "d.npz", {"x": np.arange(4)})
    with pytest.raises(OSError):
        log.append({"step": 2, "loss": 0.4})
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "log.csv"]


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    path = atomic.write_bytes(tmp_path / "blob.bin", bytes(range(256)) * 5000)  # 1.28 MB: several 1 MiB blocks
    assert atomic.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert atomic.sha256_file(atomic.write_bytes(tmp_path / "empty", b"")) == hashlib.sha256(b"").hexdigest()
