"""The prepared files and their splits: errors, split names, the deterministic npz writer, the cache key.

Prepared file ``<root>/prepared/<name>.npz`` (crawl, fashion; written byte for byte reproducibly, loads with
``allow_pickle=False``) with its manifest ``<name>.json``; an ImageFolder gets an index ``imagefolder.json``.
``split_params`` is what a prepared file depends on (config values and, for the npz files, the code of the
modules that write them: an edit re-prepares from the cached raw files in seconds). The bottom of tokenset.data:
it imports no other module of the package.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tokenset import atomic
from tokenset.config import DataConfig

__all__ = ["DataError", "Split", "SPLITS", "FORMAT_VERSION", "MAX_LISTED", "n_val", "stratified_split", "save_npz",
           "write_json", "prepared_paths", "split_params"]

Split = Literal["train", "val"]


SPLITS: tuple[str, str] = ("train", "val")  # the values 0 and 1 of the npz's ``split`` array


FORMAT_VERSION = 1


MAX_LISTED = 50  # bad files named in an error message; the count is always exact


class DataError(ValueError, RuntimeError):
    """The data cannot be provided or read as asked; the message says what was found and what to do.

    A ValueError (bad input: a missing, empty or unreadable data source), and still a RuntimeError as before."""


# ----------------------------------------------------------------------------------------- splits


def n_val(n: int, val_fraction: float) -> int:
    """Held-out count of a class of n: round(val_fraction * n), at least 1 and at most n - 1 (for n >= 2)."""
    if val_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(val_fraction * n)))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """labels (N,) int -> split (N,) uint8, 0 = train, 1 = val: ``n_val`` random members of each class held out.

    Each class draws from its own generator seeded by (seed, class), so a class's split depends only on its own
    members, the seed and the fraction.
    """
    labels = np.asarray(labels)
    split = np.zeros(len(labels), np.uint8)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        split[rng.permutation(members)[: n_val(len(members), val_fraction)]] = 1
    return split


# ----------------------------------------------------------------------------------------- files


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps), written atomically."""
    def write(out: Any) -> None:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)

    atomic.atomic_write(path, write)


def write_json(path: Path, doc: dict) -> None:
    atomic.write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def prepared_paths(cfg: DataConfig) -> tuple[Path, Path]:
    prepared = Path(cfg.root) / "prepared"
    return prepared / f"{cfg.name}.npz", prepared / f"{cfg.name}.json"


_NPZ_CODE = ("prepared", "transforms", "debian", "crawl", "fashion", "datasets")  # the modules that write an npz


def split_params(cfg: DataConfig) -> dict[str, Any]:
    """What a prepared file depends on: config values and, for the npz files, the code of the modules that write
    them (``_NPZ_CODE``; an edit re-prepares from the cached raw files in seconds; an ImageFolder index is not
    redone for code edits)."""
    if cfg.name == "imagefolder":
        return {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "skip_bad_files": cfg.skip_bad_files}
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / f"{m}.py").read_bytes() for m in _NPZ_CODE)).hexdigest()[:16]
    if cfg.name == "crawl":
        return {"sheets": list(cfg.crawl_sheets), "val_fraction": cfg.val_fraction, "seed": cfg.seed, "code": code}
    return {"split": "official train/test", "code": code}
