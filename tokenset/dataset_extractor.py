"""The small data-set CNN that stands in for Inception, its torch-fidelity adapter, and the class accuracy it reads.

``train_dataset_extractor`` trains ``SmallCNN`` to classify the data set's images and saves it;
``load_dataset_extractor`` reads it back. ``DatasetFeatureExtractor`` is registered in torch-fidelity as
``tokenset-dataset-cnn`` (``DATASET_EXTRACTOR``), so ``tokenset.metrics.fid_kid(..., extractor="dataset")`` scores
with its pooled features. Its numbers are not Inception numbers: every result records the extractor name and weights
checksum, and tables must never mix extractors. Smoke runs use it in place of Inception; the CPU pipeline's
generation scores (``GenerationConfig``, extractor ``dataset``) use it at 10k references and 1000 samples per
generator, where Inception's ~8 images/s on 2 cores do not fit; ``class_accuracy`` reads the class of a sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from tokenset import atomic
from tokenset.images import uint8_batch
from tokenset.inception import InceptionScoreUnavailable, torch_bytes

__all__ = ["DATASET_EXTRACTOR", "SmallCNN", "train_dataset_extractor", "load_dataset_extractor", "class_accuracy",
           "DatasetFeatureExtractor"]

DATASET_EXTRACTOR = "tokenset-dataset-cnn"  # the small CNN trained on the data set


class SmallCNN(nn.Module):
    """A tiny classifier whose pooled features stand in for Inception (never in the same table).

    uint8 (N, 3, H, W) -> resized to ``image_size`` -> [-1, 1] -> 4 conv blocks (3 halve the size) -> global mean
    -> (N, feature_dim).
    """

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.image_size = image_size

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(3, width, 2), block(width, width * 2, 2), block(width * 2, width * 4, 2),
                                  block(width * 4, feature_dim, 1))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) uint8 -> (N, feature_dim) float32."""
        x = x.float() / 127.5 - 1.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) uint8 -> class logits (N, num_classes)."""
        return self.head(self.features(x))


def train_dataset_extractor(images: torch.Tensor, labels: torch.Tensor, out_path: str | Path, steps: int = 500,
                            seed: int = 0, batch_size: int = 64, lr: float = 2e-3, width: int = 32,
                            feature_dim: int = 128) -> Path:
    """Train ``SmallCNN`` to classify ``images`` (uint8 (N, 3, H, W)) by ``labels`` ((N,) int); save to ``out_path``.

    AdamW with random horizontal flips, seeded by ``seed`` (initialisation and batches). The checkpoint (written
    atomically) holds the weights, the architecture and the final training-batch accuracy.
    """
    x = uint8_batch(images, what="images")
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (len(x),):
        raise ValueError(f"labels: expected shape ({len(x)},), got {tuple(y.shape)}")
    if len(x) < 2:
        raise ValueError(f"images: need at least 2 images to train on, got {len(x)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images: expected square images, got {x.shape[2]}x{x.shape[3]}")
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    num_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(num_classes, x.shape[2], width, feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    acc = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        xb, yb = x[idx], y[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float((logits.argmax(1) == yb).float().mean())
    ckpt = dict(format="tokenset-dataset-cnn/1", state_dict=net.state_dict(), num_classes=num_classes,
                image_size=x.shape[2], width=width, feature_dim=feature_dim, steps=steps, seed=seed,
                train_batch_accuracy=acc, num_images=len(x))
    out_path = Path(out_path)
    atomic.write_bytes(out_path, torch_bytes(ckpt))
    return out_path


def load_dataset_extractor(path: str | Path) -> SmallCNN:
    """The ``SmallCNN`` saved by ``train_dataset_extractor``, in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "tokenset-dataset-cnn/1":
        raise ValueError(f"{path}: not a checkpoint written by train_dataset_extractor")
    net = SmallCNN(ckpt["num_classes"], ckpt["image_size"], ckpt["width"], ckpt["feature_dim"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


@torch.no_grad()
def class_accuracy(net: SmallCNN | None, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` (uint8 (N, 3, H, W)) that ``net`` classifies as ``labels`` ((N,) int): for generated
    images, how often a sample is recognisably of the class it was conditioned on. ``net`` None (no data-set CNN,
    e.g. a run scored with Inception): NaN."""
    if net is None:
        return math.nan
    x = uint8_batch(images, what="images")
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (len(x),):
        raise ValueError(f"labels: expected shape ({len(x)},), got {tuple(y.shape)}")
    pred = torch.cat([net(x[lo:lo + batch_size]).argmax(1) for lo in range(0, len(x), batch_size)])
    return float((pred == y).float().mean())


class DatasetFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter of ``SmallCNN``: one feature layer, 'pool', used for FID, KID and PRC."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name}: feature_extractor_weights_path (a train_dataset_extractor checkpoint) is needed")
        self.net = load_dataset_extractor(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        return (self.net.features(x),)

    @staticmethod
    def get_provided_features_list() -> tuple[str]:
        return ("pool",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise InceptionScoreUnavailable(f"{DATASET_EXTRACTOR} is not Inception: no Inception Score")
        return "pool"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if DATASET_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DATASET_EXTRACTOR, DatasetFeatureExtractor)
