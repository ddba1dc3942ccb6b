"""Checkpoints: atomic writes, and loads that never execute pickled code.

``save_checkpoint(path, state)`` writes ``state`` through ``tokenset.atomic``: a temporary file in the same
directory, flushed, fsynced and renamed over ``path``. A crash at any moment leaves either the old complete file or
the new complete file at ``path``, never a truncated one.

``load_checkpoint(path)`` uses ``torch.load(weights_only=True)``: only tensors, numbers, strings, None, bools and
containers of them can be loaded, so a malicious pickle is refused instead of run. A state therefore holds only such
values: model/EMA/optimizer state dicts, the step, RNG states as tensors and lists (``rng_state()``), and the
resolved config as a plain dict. Imports nothing else from tokenset but ``tokenset.atomic``.

A resume continues a checkpoint only if it belongs to the same run: ``config_changes(saved, now)`` lists what
differs between two resolved configurations, and ``fingerprint(x)`` is the sha256 that a configuration records
for its training inputs (images, tokens), so a run on other data is another run.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenset.atomic import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "config_changes",
           "fingerprint"]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: corrupt, truncated, not a checkpoint, or unsafe."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (a dict of weights_only-loadable values) atomically to ``path``; returns the path."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Raises FileNotFoundError if ``path`` does not exist, and CheckpointError if it is truncated or corrupt, holds
    anything but weights-only values (e.g. a pickle that would run code), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; garbage or a cut-off file is not one
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a torch.save zip archive; "
                              "expected a file written by save_checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain containers "
            f"(loading with weights_only=True, which never runs pickled code): {_first_line(err)}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}; expected a dict of states")
    return state


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no details"


# --------------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------------------------- run identity


def config_changes(saved: Any, now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's configuration ``saved`` and ``now`` (nested dicts, compared leaf by leaf
    under dotted keys), e.g. ``["train.steps: 300 in the checkpoint, 600 now"]``; empty if they are equal."""
    if not isinstance(saved, dict):
        return [f"the checkpoint holds no configuration (got {type(saved).__name__})"]
    flat_saved, flat_now = _flatten(saved), _flatten(now)
    out = []
    for key in sorted(flat_saved.keys() | flat_now.keys()):
        if key not in flat_now:
            out.append(f"{key}: {flat_saved[key]!r} in the checkpoint, absent now")
        elif key not in flat_saved:
            out.append(f"{key}: absent in the checkpoint, {flat_now[key]!r} now")
        elif flat_saved[key] != flat_now[key]:
            out.append(f"{key}: {flat_saved[key]!r} in the checkpoint, {flat_now[key]!r} now")
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint(data: Any) -> str:
    """``"sha256:<hex>"`` of a tensor's dtype, shape and values, or of a Dataset's type, length and, where it has
    them (``tokenset.data.ImageFolderDataset``), its file paths, labels and image size (the files are not read)."""
    h = hashlib.sha256()
    if isinstance(data, torch.Tensor):
        t = data.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        h.update(f"dataset {type(data).__name__} {len(data)}\n".encode())
        for attr in ("paths", "labels", "image_size"):
            if hasattr(data, attr):
                h.update(f"{attr} {list(getattr(data, attr)) if attr != 'image_size' else data.image_size}\n".encode())
    else:
        raise ValueError(f"fingerprint: expected a tensor or a sized torch Dataset, got {type(data).__name__}")
    return "sha256:" + h.hexdigest()
