"""Fashion-MNIST from the Debian package dataset-fashion-mnist: the IDX reader and the arrays (70k 28x28 greyscale,
10 classes; grey repeated to 3 channels; the official train/test split is our train/val).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from tokenset.data.prepared import DataError

__all__ = ["FASHION_PACKAGE", "FASHION_DIR", "FASHION_CLASSES", "read_idx", "fashion_arrays"]

FASHION_PACKAGE = "dataset-fashion-mnist"


FASHION_DIR = "usr/share/datasets/fashion-mnist"


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip if the name ends in .gz) -> array of its shape and type.

    Layout: 2 zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes, then the data.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = raw[4 + 4 * ndim:]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: shape {dims} needs {expected} bytes of data, found {len(data)}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def fashion_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The npz arrays (images (N, 28, 28, 3) uint8, labels, split, origin, class_names) of the IDX files in
    ``folder`` (the unpacked package's ``FASHION_DIR``)."""
    parts = []
    for s, prefix in enumerate(("train", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise DataError(f"{folder}: {prefix} images {images.shape} {images.dtype} and labels {labels.shape} "
                            f"do not match (expected (N, 28, 28) uint8 and (N,))")
        if labels.min() < 0 or labels.max() >= len(FASHION_CLASSES):
            raise DataError(f"{folder}: {prefix} labels outside [0, {len(FASHION_CLASSES)})")
        parts.append((images, labels, np.full(len(labels), s, np.uint8), np.arange(len(labels), dtype=np.int64)))
    return {
        "images": np.repeat(np.concatenate([p[0] for p in parts])[..., None], 3, axis=-1),  # (N, 28, 28, 3)
        "labels": np.concatenate([p[1] for p in parts]),
        "split": np.concatenate([p[2] for p in parts]),
        "origin": np.concatenate([p[3] for p in parts]),
        "class_names": np.asarray(FASHION_CLASSES),
    }
