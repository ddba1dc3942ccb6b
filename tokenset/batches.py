"""Batches for ``Trainer.fit``: a step-indexed, resumable, rank-sharded stream of training images.

``image_batches(data, batch_size, seed, flip)`` is a ``Batches`` (start step -> an iterator of batches for steps
start, start+1, ...): batch s and its augmentation are the same whatever step the iteration starts at, so a resumed
run sees the batches an uninterrupted one would (``StepSampler`` draws the indices).

Images are passed as uint8 tensors (N, 3, H, W) in [0, 255] (``tokenset.data.load_arrays``), the fast path for data
that fits in memory; a ``torch.utils.data.Dataset`` yielding ``(uint8 image (3, H, W), label)`` (e.g.
``tokenset.data.load_dataset(cfg, split)`` for an ImageFolder) is read through a DataLoader instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tokenset.data.transforms import random_hflip
from tokenset.images import to_float
from tokenset.trainer import Batches, rank_world

__all__ = ["StepSampler", "image_batches"]


class StepSampler(Sampler[list[int]]):
    """Batches of indices for steps start, start+1, ...: epoch e is a permutation seeded by (seed, e), sharded
    over ranks, cut into full batches. Batch s is the same whatever step the iteration starts at."""

    def __init__(self, n: int, batch: int, seed: int, start: int, rank: int, world: int) -> None:
        self.n, self.batch, self.seed, self.start, self.rank, self.world = n, batch, seed, start, rank, world
        self.per_epoch = (n // world) // batch
        if self.per_epoch < 1:
            raise ValueError(f"{n} training images are fewer than one batch of {batch} per rank x {world} ranks")

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank::self.world]
            for j in range(k, self.per_epoch):
                yield order[j * self.batch:(j + 1) * self.batch].tolist()
            step = (epoch + 1) * self.per_epoch

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs a number
        return 1 << 62


def image_batches(data: torch.Tensor | Dataset, batch_size: int, seed: int, flip: bool,
                  num_workers: int = 0, rotate: bool = False) -> Batches:
    """A ``Batches`` of float images (B, 3, H, W) in [-1, 1] from uint8 images (N, 3, H, W) or a Dataset of
    (uint8 (3, H, W), label); ``batch_size`` is global (divided over ranks). Augmentation, drawn per (seed, step,
    rank): ``flip`` left-right flips, ``rotate`` rotations by k * 90 degrees (square images)."""
    rank, world = rank_world()
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {world} processes")
    local = batch_size // world

    def flip_and_scale(images: torch.Tensor, step: int) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"training images must be uint8 in [0, 255], got {images.dtype}")
        g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + rank)
        if flip:
            images = random_hflip(images, g)
        if rotate:
            k = torch.randint(4, (images.shape[0],), generator=g)
            images = torch.stack([img.rot90(int(r), dims=(-2, -1)) for img, r in zip(images, k)])
        return to_float(images)

    def make(start: int) -> Iterator[torch.Tensor]:
        sampler = StepSampler(len(data), local, seed, start, rank, world)
        if isinstance(data, torch.Tensor):
            for step, idx in enumerate(sampler, start):
                yield flip_and_scale(data[idx], step)
        else:
            loader = DataLoader(data, batch_sampler=sampler, num_workers=num_workers,
                                generator=torch.Generator().manual_seed(seed))
            for step, (images, _) in enumerate(loader, start):
                yield flip_and_scale(images, step)

    return make
