"""Throughput of the evaluation feature extractors on CPU (or the GPU if there is one), 32x32 uint8 inputs.

Inception (torch-fidelity's inception-v3-compat, resized to 299 inside) and the small data-set CNN, in images/s,
plus the time to cache real statistics for a split of ``--real`` images. Uses the offline Inception weights
(built on first use, see tokenset.inception.inception_weights).

Run: .venv/bin/python benchmarks/bench_metrics.py [--batch 50] [--images 100] [--real 200]
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tokenset import metrics
from tokenset import inception as inception_mod


@torch.no_grad()
def images_per_second(extractor: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    extractor(images[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        extractor(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def main(batch: int, num_images: int, num_real: int) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (num_images,), generator=g)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, batch {batch}, "
          f"{num_images} images 32x32")

    start = time.perf_counter()
    weights = inception_mod.inception_weights()
    print(f"inception_weights()           {time.perf_counter() - start:8.2f} s   {weights}")
    inception = metrics.load_extractor("inception", weights).to(device)
    print(f"{'inception-v3-compat (299 px)':30s}{images_per_second(inception, images, batch):8.2f} images/s"
          "   (batch norm folded, channels-last: what fid_kid runs)")
    plain = metrics.FeatureExtractorInceptionV3(metrics.INCEPTION, ["2048"],
                                                feature_extractor_weights_path=str(weights)).eval().to(device)
    print(f"{'  the same, unfolded':30s}{images_per_second(plain, images, batch):8.2f} images/s"
          "   (torch-fidelity's module as it ships)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ckpt = metrics.train_dataset_extractor(images.cpu(), labels, Path(tmp) / "cnn.pt", steps=50, seed=0)
        print(f"train_dataset_extractor(50 steps) {time.perf_counter() - start:6.2f} s")
        small = metrics.load_extractor("dataset", ckpt).to(device)
        print(f"{'tokenset-dataset-cnn (32 px)':30s}{images_per_second(small, images, batch):8.1f} images/s")

        real = torch.randint(0, 256, (num_real, 3, 32, 32), generator=g, dtype=torch.uint8)
        fake = real[: num_real // 2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.KIDSubsetClamped)
            for attempt in ("first (extracts real)", "second (cached real)"):
                start = time.perf_counter()
                metrics.fid_kid(real, fake, weights=weights, real_split="bench", cache_dir=tmp, batch_size=batch)
                print(f"fid_kid inception {num_real} real / {len(fake)} fake, {attempt}: "
                      f"{time.perf_counter() - start:7.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--real", type=int, default=100)
    args = parser.parse_args()
    main(args.batch, args.images, args.real)
