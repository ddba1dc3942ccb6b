"""Atomic file writes: a reader (or a crash) never sees a partly written file.

``atomic_write(path, write)`` calls ``write(fh)`` on a temporary file in ``path``'s folder (a unique name, so
processes or ranks writing the same path do not clash), flushes and fsyncs it, renames it over ``path``
(``os.replace`` is atomic on POSIX) and fsyncs the folder. On any error the temporary file is removed and ``path``
keeps its previous content. ``write_bytes`` / ``write_text`` are the one-call forms. ``sha256_file`` is the one
file checksum of the library (manifests, cache keys, weights records). Every file the library writes
for later reading goes through here (checkpoints, training logs, prepared data and manifests, cached weights,
result tables and JSON); figures are saved by matplotlib. Imports nothing else from tokenset.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "write_bytes", "write_text", "sha256_file"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Create or replace ``path`` with what ``write(fh)`` writes to a binary file handle; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; written files are readable like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` in UTF-8, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors: the rename itself has happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
