"""tokenset.trivial: the baselines beside every reconstruction number are exact and refuse bad input."""

from __future__ import annotations

import pytest
import torch

from tokenset.images import psnr
from tokenset.trivial import bits_per_image, block_means, mean_image, trivial_reconstructions


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_mean_image_is_each_channels_mean():
    x = _images()
    m = mean_image(x)
    assert m.shape == x.shape and m.dtype == torch.uint8
    expected = x.double().mean(dim=(2, 3)).round()
    assert torch.equal(m[:, :, 0, 0].double(), expected)
    assert torch.equal(m, m[:, :, :1, :1].expand_as(m))  # constant per image and channel


@pytest.mark.parametrize("grid", [1, 2, 4, 8, 32])
def test_block_means_are_block_averages(grid):
    x = _images(2)
    b = block_means(x, grid)
    k = 32 // grid
    block = x[:, :, :k, :k].double().mean(dim=(2, 3)).round()
    assert torch.equal(b[:, :, 0, 0].double(), block) and torch.equal(b[:, :, k - 1, k - 1].double(), block)
    if grid == 32:
        assert torch.equal(b, x)  # one pixel per block: the image itself
    if grid == 1:
        assert torch.equal(b, mean_image(x))


def test_finer_thumbnails_score_higher_on_smooth_images():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = (127 + 100 * torch.sin(xx / 5) * torch.cos(yy / 7)).round().to(torch.uint8)
    x = smooth.expand(2, 3, 32, 32).contiguous()
    scores = {k: float(psnr(v, x)) for k, v in trivial_reconstructions(x, grids=(4, 8, 16)).items()}
    assert scores["mean"] < scores["block 4x4"] < scores["block 8x8"] < scores["block 16x16"]


def test_bits_per_image():
    assert bits_per_image("mean", 3) == 24 and bits_per_image("block 8x8", 1) == 512
    with pytest.raises(ValueError, match="'mean' or 'block KxK'"):
        bits_per_image("median", 1)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 32, 32), "expected uint8"),
    (torch.zeros(3, 32, 32, dtype=torch.uint8), "expected uint8 \\(N, C, H, W\\)"),
])
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        mean_image(bad)


@pytest.mark.parametrize("grid", [0, 3, 5, 2.0])
def test_bad_grid(grid):
    with pytest.raises(ValueError, match="grid: expected a positive integer dividing"):
        block_means(_images(1), grid)
