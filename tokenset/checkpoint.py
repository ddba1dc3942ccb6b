"""Checkpoints: atomic writes, and loads that never execute pickled code.

``save_checkpoint(path, state)`` writes ``state`` through ``tokenset.atomic``: a temporary file in the same
directory, flushed, fsynced and renamed over ``path``. A crash at any moment leaves either the old complete file or
the new complete file at ``path``, never a truncated one.

``load_checkpoint(path)`` uses ``torch.load(weights_only=True)``: only tensors, numbers, strings, None, bools and
containers of them can be loaded, so a malicious pickle is refused instead of run. A state therefore holds only such
values: model/EMA/optimizer state dicts, the step, RNG states as tensors and lists (``rng_state()``), and the
resolved config as a plain dict. Imports nothing else from tokenset but ``tokenset.atomic``.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenset.atomic import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


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
