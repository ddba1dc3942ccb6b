"""tokenset.images: the one uint8 <-> float conversion, the checked batch conversion, and PSNR / SSIM on uint8."""

from __future__ import annotations

import math

import pytest
import torch

from tokenset.images import psnr, ssim, to_float, to_uint8, uint8_batch


def smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): bilinear upsampling of 4x4 colour noise (image-like, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------- conversions


def test_uint8_float_round_trip_all_values():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    f = to_float(u)
    assert f.dtype == torch.float32 and f.min() == -1.0 and f.max() == 1.0
    assert torch.equal(to_uint8(f), u)


def test_to_uint8_clamps_or_raises_and_checks_types():
    assert to_uint8(torch.tensor([-3.0, 0.0, 7.0])).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="outside value_range"):
        to_uint8(torch.tensor([-3.0, 0.0]), clamp=False)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="lo < hi"):
        to_uint8(torch.zeros(2), value_range=(1.0, 1.0))
    with pytest.raises(TypeError):
        to_float(torch.zeros(2))
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def test_float_conversions_are_exact_on_8_bit_values():
    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    assert torch.equal(uint8_batch(v), v)
    assert torch.equal(uint8_batch(v.float() / 255), v)  # [0, 1], inferred
    assert torch.equal(uint8_batch(v.float()), v)  # [0, 255], inferred
    assert torch.equal(uint8_batch(v.float() / 127.5 - 1, value_range=(-1, 1)), v)
    assert torch.equal(to_uint8(v.float() / 127.5 - 1), v)  # the same mapping, one definition


def test_uint8_batch_bad_input():
    x = smooth_images(2, seed=1)
    with pytest.raises(ValueError, match="value_range"):
        uint8_batch(x.float() / 127.5 - 1, value_range=(0, 1))
    with pytest.raises(ValueError, match="outside both"):
        uint8_batch(x.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="3 channels"):
        uint8_batch(x[:, :1])
    with pytest.raises(ValueError, match="no images"):
        uint8_batch(x[:0])
    with pytest.raises(TypeError):
        uint8_batch(x.numpy())


# --------------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_and_ssim_known_values():
    a = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    b = torch.full((2, 3, 32, 32), 110, dtype=torch.uint8)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / 100))  # MSE = 10^2
    c1 = (0.01 * 255) ** 2  # constant images: SSIM is the luminance term alone
    assert ssim(a, b).item() == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-6)
    x = smooth_images(3, seed=14)
    assert torch.isinf(psnr(x, x)) and ssim(x, x).item() == pytest.approx(1.0)
    assert psnr(x, x.flip(0), reduction="none").shape == (3,) and ssim(x, x.flip(0), reduction="none").shape == (3,)
    as_float = x.float() / 127.5 - 1  # decoder outputs in [-1, 1]
    y = smooth_images(3, seed=15)
    assert psnr(as_float, y.float() / 127.5 - 1, value_range=(-1, 1)) == psnr(x, y)
    assert ssim(as_float, y.float() / 127.5 - 1, value_range=(-1, 1)) == ssim(x, y)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x, y[:2])
    with pytest.raises(ValueError, match="3 channels"):
        ssim(x[:, :1], y[:, :1])
    with pytest.raises(ValueError, match="reduction"):
        psnr(x, y, reduction="sum")


@pytest.mark.parametrize("batch", [1, 4])
def test_psnr_of_floats_is_the_psnr_of_their_uint8_quantisation(batch):
    """One PSNR: a float reconstruction is scored as the 8-bit image it would be saved as (training logs too)."""
    g = torch.Generator().manual_seed(batch)
    target = smooth_images(batch, seed=batch)
    recon = (to_float(target) + 0.05 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    assert torch.equal(psnr(recon, target.float() / 127.5 - 1, value_range=(-1, 1), reduction="none"),
                       psnr(to_uint8(recon), target, reduction="none"))


@pytest.mark.parametrize("shape", [(1, 3, 11, 11), (6, 3, 32, 32), (3, 3, 28, 40)])
def test_ssim_equals_torchmetrics(shape):
    from torchmetrics.functional import structural_similarity_index_measure

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    y = (x.double() * 0.7 + 20 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 255).to(torch.uint8)
    ours = ssim(x, y, reduction="none")
    theirs = structural_similarity_index_measure(x.double(), y.double(), data_range=255.0, reduction="none")
    assert ours.shape == (shape[0],)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
