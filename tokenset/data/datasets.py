"""One API over the three sources: ``prepare`` (fetch, parse, split, cache), the Datasets, ``load_arrays``,
class names, split labels, samples per class, the summary, and loaders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tokenset import atomic
from tokenset.config import DataConfig
from tokenset.data.crawl import CRAWL_PACKAGE, crawl_arrays
from tokenset.data.debian import deb_version, extract_deb, fetch_deb
from tokenset.data.fashion import FASHION_CLASSES, FASHION_DIR, FASHION_PACKAGE, fashion_arrays
from tokenset.data.imagefolder import ImageFolderDataset, imagefolder_index, prepare_imagefolder
from tokenset.data.prepared import (FORMAT_VERSION, SPLITS, DataError, Split, prepared_paths, save_npz,
                                    split_params, write_json)
from tokenset.data.transforms import FlipMixin, fit_size

__all__ = ["prepare", "ArrayDataset", "load_arrays", "load_dataset", "class_names", "split_labels",
           "samples_per_class", "summary", "make_loader", "set_epoch"]

def _manifest(cfg: DataConfig, npz: Path, arrays: dict[str, np.ndarray], source: dict, dropped: dict) -> dict:
    names = [str(n) for n in arrays["class_names"]]
    counts = {}
    for s, split_name in enumerate(SPLITS):
        sel = arrays["labels"][arrays["split"] == s]
        counts[split_name] = {n: int((sel == k).sum()) for k, n in enumerate(names)}
    counts["total"] = {n: counts["train"][n] + counts["val"][n] for n in names}
    return {
        "name": cfg.name, "format_version": FORMAT_VERSION, "params": split_params(cfg),
        "image_shape": list(arrays["images"].shape[1:]), "class_names": names,
        "n_total": int(len(arrays["labels"])), "n_train": int((arrays["split"] == 0).sum()),
        "n_val": int((arrays["split"] == 1).sum()), "counts": counts, "dropped": dropped, "source": source,
        "npz": npz.name, "npz_sha256": atomic.sha256_file(npz),
    }


def _cache_valid(cfg: DataConfig) -> bool:
    npz, manifest = prepared_paths(cfg)
    if not (npz.is_file() and manifest.is_file()):
        return False
    try:
        doc = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return (doc.get("format_version") == FORMAT_VERSION and doc.get("params") == split_params(cfg)
            and doc.get("npz_sha256") == atomic.sha256_file(npz))


def prepare(cfg: DataConfig, force: bool = False) -> Path:
    """Fetch and prepare ``cfg``'s data set; returns the npz (crawl, fashion) or the index JSON (imagefolder).

    A no-op when the prepared file exists, its checksum matches the manifest and it was made with the same
    parameters; raw downloads in ``<root>/raw/`` are reused, so apt is needed only once.
    """
    if cfg.name == "imagefolder":
        return prepare_imagefolder(cfg, force)
    npz, manifest = prepared_paths(cfg)
    if not force and _cache_valid(cfg):
        return npz
    raw = Path(cfg.root) / "raw"
    package = CRAWL_PACKAGE if cfg.name == "crawl" else FASHION_PACKAGE
    deb = fetch_deb(package, raw / package)
    tree = extract_deb(deb, raw / package / "tree")
    source = {"package": package, "version": deb_version(deb), "deb": deb.name,
              "deb_sha256": atomic.sha256_file(deb)}
    if cfg.name == "crawl":
        arrays, dropped = crawl_arrays(cfg, tree, deb.name)
    else:
        arrays, dropped = fashion_arrays(tree / FASHION_DIR), {}
    npz.parent.mkdir(parents=True, exist_ok=True)
    save_npz(npz, arrays)
    write_json(manifest, _manifest(cfg, npz, arrays, source, dropped))
    return npz


def _load_npz(cfg: DataConfig) -> dict[str, np.ndarray]:
    npz = prepare(cfg)
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------------------- datasets


class ArrayDataset(FlipMixin, Dataset):
    """In-memory images (N, 3, S, S) uint8 and labels (N,) int64 -> (image (3, S, S), label: int)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 as_float: bool = False, flip: bool = False, flip_seed: int = 0):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
        self.images, self.labels, self.class_names = images, labels.long(), list(class_names)
        self.as_float, self.flip, self.flip_seed = as_float, flip, flip_seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._finish(self.images[i], i, self.as_float), int(self.labels[i])


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _fit(cfg: DataConfig, images: torch.Tensor) -> torch.Tensor:
    native = images.shape[-1]
    if cfg.name == "fashion" and cfg.image_size >= native:
        return fit_size(images, cfg.image_size, "pad")
    return fit_size(images, cfg.image_size, "resize")


def load_arrays(cfg: DataConfig, split: Split, max_bytes: int = 4 << 30) -> tuple[torch.Tensor, torch.Tensor]:
    """One split in memory: images (N, 3, S, S) uint8 with S = cfg.image_size, labels (N,) int64.

    Prepares the data if needed. For an ImageFolder every file is decoded; more than ``max_bytes`` of pixels is
    refused (use ``load_dataset`` for large folders).
    """
    s = _check_split(split)
    if cfg.name == "imagefolder":
        ds = load_dataset(cfg, split)
        need = len(ds) * 3 * cfg.image_size ** 2
        if need > max_bytes:
            raise DataError(f"{len(ds)} images of {cfg.image_size} px need {need / 2**30:.1f} GiB > max_bytes; "
                            f"use load_dataset() for this ImageFolder")
        if len(ds) == 0:
            return torch.zeros((0, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor(ds.labels, dtype=torch.int64)
    images, labels, _ = _npz_split(cfg, s)
    return images, labels


def _npz_split(cfg: DataConfig, s: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    arrays = _load_npz(cfg)
    sel = arrays["split"] == s
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"][sel].transpose(0, 3, 1, 2)))
    names = [str(n) for n in arrays["class_names"]]
    return _fit(cfg, images), torch.from_numpy(arrays["labels"][sel]), names


def load_dataset(cfg: DataConfig, split: Split, as_float: bool = False, flip: bool = False,
                 flip_seed: int | None = None) -> ArrayDataset | ImageFolderDataset:
    """A torch Dataset of (image, label): image (3, S, S) uint8, or float32 in [-1, 1] when ``as_float``;
    label an int. ``flip``: random horizontal flips (training), drawn from (flip_seed (default cfg.seed), epoch,
    index); call ``set_epoch`` for new flips each epoch."""
    s = _check_split(split)
    flip_seed = cfg.seed if flip_seed is None else flip_seed
    if cfg.name == "imagefolder":
        index = imagefolder_index(cfg)
        rows = index[SPLITS[s]]
        root = Path(cfg.root)
        return ImageFolderDataset([root / r for r, _ in rows], [lab for _, lab in rows], index["class_names"],
                                  cfg.image_size, as_float, flip, flip_seed)
    images, labels, names = _npz_split(cfg, s)
    return ArrayDataset(images, labels, names, as_float, flip, flip_seed)


def class_names(cfg: DataConfig) -> list[str]:
    """Names of the classes, index = label (prepares crawl and ImageFolder data if needed)."""
    if cfg.name == "fashion":
        return list(FASHION_CLASSES)
    if cfg.name == "imagefolder":
        return list(imagefolder_index(cfg)["class_names"])
    return [str(n) for n in _load_npz(cfg)["class_names"]]


def split_labels(cfg: DataConfig, split: Split) -> np.ndarray:
    """The labels (N,) int64 of a split, without loading images (cheap for every source)."""
    s = _check_split(split)
    if cfg.name == "imagefolder":
        return np.asarray([lab for _, lab in imagefolder_index(cfg)[SPLITS[s]]], np.int64)
    arrays = _load_npz(cfg)
    return arrays["labels"][arrays["split"] == s]


def samples_per_class(cfg: DataConfig, split: Split, per_class: int, seed: int,
                      max_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random images of each of the first ``max_classes`` classes, class after class (a grid with
    ``per_class`` columns has one class per row): images (K * per_class, 3, S, S) uint8, labels (K * per_class,)
    int64. A class with fewer images is padded with black images labelled -1."""
    ds = load_dataset(cfg, split)
    labels = np.asarray(ds.labels)
    if len(labels) == 0:
        raise DataError(f"split {split!r} of {cfg.name} is empty")
    rng = np.random.default_rng(seed)
    blank = torch.zeros((3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    images, out_labels = [], []
    for c in range(len(ds.class_names) if max_classes is None else min(max_classes, len(ds.class_names))):
        members = np.flatnonzero(labels == c)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
        images += [ds[i][0] for i in picks] + [blank] * (per_class - len(picks))
        out_labels += [c] * len(picks) + [-1] * (per_class - len(picks))
    return torch.stack(images), torch.as_tensor(out_labels, dtype=torch.int64)


def summary(cfg: DataConfig) -> dict[str, Any]:
    """Counts per class and split, plus the manifest's drop statistics and checksums: a metrics dict."""
    names = class_names(cfg)
    out: dict[str, Any] = {"dataset": cfg.name, "image_size": cfg.image_size, "num_classes": len(names)}
    for split in SPLITS:
        labels = split_labels(cfg, split)  # type: ignore[arg-type]
        out[f"n_{split}"] = int(len(labels))
        out[f"{split}_per_class"] = {n: int((labels == k).sum()) for k, n in enumerate(names)}
    if cfg.name != "imagefolder":
        doc = json.loads(prepared_paths(cfg)[1].read_text())
        out.update(dropped=doc["dropped"], source=doc["source"], npz_sha256=doc["npz_sha256"])
    return out


# ----------------------------------------------------------------------------------------- loaders


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False, distributed: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order is set by ``seed``; with ``distributed``, a DistributedSampler (needs an
    initialised process group) shards the data. Call ``set_epoch(loader, epoch)`` at the start of each epoch."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("cannot make a loader over an empty dataset")
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size={batch_size} > {n} examples with drop_last=True gives no batches")
    sampler = None
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed.init_process_group() first")
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, generator=generator, pin_memory=pin_memory)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed loader and redraw the dataset's random flips for ``epoch``."""
    if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, FlipMixin):
        loader.dataset.set_epoch(epoch)
