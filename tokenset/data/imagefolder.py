"""Your own images: an ImageFolder ``<root>/train/<class>/*.{jpg,png,...}`` (and optionally ``<root>/val/<class>/*``,
else ``val_fraction`` of each class is held out), checked once, indexed, and read lazily as RGB, ADM centre crops.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tokenset.config import DataConfig
from tokenset.data.prepared import FORMAT_VERSION, MAX_LISTED, DataError, split_params, stratified_split, write_json
from tokenset.data.transforms import FlipMixin, adm_center_crop, to_rgb

__all__ = ["IMAGE_EXTENSIONS", "check_images", "prepare_imagefolder", "imagefolder_index", "ImageFolderDataset"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _scan(folder: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """ImageFolder ``folder/<class>/<files>`` -> (class names, [(relative path, label, size, mtime_ns)])."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; an ImageFolder needs <root>/train/<class>/<images> "
                        f"(and optionally <root>/val/<class>/<images>)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class>/<images>")
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise DataError(f"{folder} has classes not in train/: {unknown[:MAX_LISTED]}")
    entries, empty = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        files = sorted((e for e in os.scandir(folder / name)
                        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS),
                       key=lambda e: e.name)
        if not files:
            empty.append(name)
        for e in files:
            st = e.stat()
            entries.append((f"{folder.name}/{name}/{e.name}", label, st.st_size, st.st_mtime_ns))
    if empty:
        raise DataError(f"{len(empty)} class folder(s) under {folder} hold no images (extensions "
                        f"{sorted(IMAGE_EXTENSIONS)}): {empty[:MAX_LISTED]}")
    return list(classes), entries


def _check_image(path: str) -> str | None:
    """None if ``path`` decodes fully and converts to RGB, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.load()
            to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, struct.error) as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_images(paths: Sequence[str], workers: int | None = None) -> list[tuple[str, str]]:
    """Decode every file (in ``workers`` processes for long lists) -> [(path, reason)] for those that fail."""
    workers = workers or min(16, os.cpu_count() or 1)
    if len(paths) < 512 or workers == 1:
        reasons = [_check_image(p) for p in paths]
    else:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_check_image, paths, chunksize=256))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _report_bad(bad: Sequence[tuple[str, str]], skip: bool, where: Path) -> None:
    if not bad:
        return
    if skip:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) under {where} (data.skip_bad_files=true); "
                      f"first: {bad[0][0]} ({bad[0][1]})", UserWarning, stacklevel=3)
        return
    listing = "\n".join(f"  {p}: {r}" for p, r in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise DataError(f"{len(bad)} unreadable or truncated image file(s) under {where}:\n{listing}{more}\n"
                    f"Fix or remove them, or set data.skip_bad_files: true to skip them.")


def prepare_imagefolder(cfg: DataConfig, force: bool = False) -> Path:
    """Scan ``cfg.root``'s ImageFolder, decode every file once (in parallel) and write the index
    ``<root>/prepared/imagefolder.json`` (reused while the files' names, sizes and mtimes are unchanged)."""
    _INDEX_MEMO.clear()
    root = Path(cfg.root)
    classes, train = _scan(root / "train", None)
    val = _scan(root / "val", classes)[1] if (root / "val").is_dir() else None
    listing = "\n".join(f"{r}\t{s}\t{m}" for r, _, s, m in train + (val or []))
    fingerprint = hashlib.sha256(listing.encode()).hexdigest()
    index = root / "prepared" / "imagefolder.json"
    if not force and index.is_file():
        doc = json.loads(index.read_text())
        if (doc.get("format_version") == FORMAT_VERSION and doc.get("fingerprint") == fingerprint
                and doc.get("params") == split_params(cfg)):
            _report_bad(doc["bad"], cfg.skip_bad_files, root)
            return index
    everything = train + (val or [])
    bad = check_images([str(root / r) for r, *_ in everything])
    _report_bad(bad, cfg.skip_bad_files, root)
    bad_set = {p for p, _ in bad}
    keep = lambda rows: [(r, lab) for r, lab, *_ in rows if str(root / r) not in bad_set]  # noqa: E731
    train_rows = keep(train)
    if val is None:
        split = stratified_split(np.asarray([lab for _, lab in train_rows]), cfg.val_fraction, cfg.seed)
        val_rows = [row for row, s in zip(train_rows, split) if s == 1]
        train_rows = [row for row, s in zip(train_rows, split) if s == 0]
    else:
        val_rows = keep(val)
    if not train_rows:
        raise DataError(f"no readable training images under {root / 'train'}")
    doc = {"name": "imagefolder", "format_version": FORMAT_VERSION, "params": split_params(cfg),
           "fingerprint": fingerprint, "val_source": "val/" if val is not None else "val_fraction of train/",
           "class_names": classes, "n_train": len(train_rows), "n_val": len(val_rows),
           "bad": [[str(Path(p).relative_to(root)), r] for p, r in bad], "train": train_rows, "val": val_rows}
    index.parent.mkdir(parents=True, exist_ok=True)
    write_json(index, doc)
    return index


_INDEX_MEMO: dict[tuple[str, str], dict] = {}  # (root, params) -> index, so one process scans a folder once


def imagefolder_index(cfg: DataConfig) -> dict:
    """The ImageFolder index of ``cfg`` (prepared if needed), read once per process."""
    key = (str(Path(cfg.root).resolve()), json.dumps(split_params(cfg)))
    if key not in _INDEX_MEMO:
        _INDEX_MEMO[key] = json.loads(prepare_imagefolder(cfg).read_text())
    return _INDEX_MEMO[key]


class ImageFolderDataset(FlipMixin, Dataset):
    """Lazily decoded files -> (image (3, S, S), label: int), converted by ``to_rgb`` and ``adm_center_crop``."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], class_names: Sequence[str],
                 image_size: int, as_float: bool = False, flip: bool = False, flip_seed: int = 0):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.class_names = [str(p) for p in paths], list(labels), list(class_names)
        self.image_size, self.as_float, self.flip, self.flip_seed = image_size, as_float, flip, flip_seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                arr = adm_center_crop(to_rgb(im), self.image_size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read {self.paths[i]} ({err}); it changed since `prepare` checked it? "
                            f"Run tokenset.data.prepare(cfg, force=True)") from err
        image = torch.from_numpy(np.array(arr)).permute(2, 0, 1).contiguous()
        return self._finish(image, i, self.as_float), self.labels[i]
