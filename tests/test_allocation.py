"""Capacity follows complexity: per-image code statistics, complexity measures, Spearman with a bootstrap
interval, and the token-level influence maps (decoding fewer than M tokens)."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from tests.helpers import randomized
from tokenset import allocation
from tokenset.config import TokenizerConfig
from tokenset.tokenizer import SetTokenizer


def test_code_stats_hand_made():
    tokens = torch.tensor([[1, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8], [9, 4, 9, 4]])
    distinct, largest = allocation.code_stats(tokens, 10)
    assert distinct.tolist() == [3, 1, 4, 2]
    assert largest.tolist() == [2, 4, 1, 2]
    assert [t.tolist() for t in allocation.code_stats(tokens, 10, chunk=1)] == [[3, 1, 4, 2], [2, 4, 1, 2]]


def test_png_size_grows_with_noise():
    g = torch.Generator().manual_seed(0)
    sizes = []
    for amplitude in (0, 8, 64, 255):  # uniform noise of this width around mid-grey, never clipped
        lo = 128 - amplitude // 2
        noisy = torch.randint(lo, lo + amplitude + 1, (1, 3, 32, 32), generator=g, dtype=torch.int64)
        sizes.append(int(allocation.png_bytes(noisy.to(torch.uint8))[0]))
    assert sizes == sorted(sizes) and sizes[0] < sizes[1] < sizes[-1], sizes
    assert sizes[-1] > 5 * sizes[0]
    # more compression never makes a noisy image larger
    noisy = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert (allocation.png_bytes(noisy, 9) <= allocation.png_bytes(noisy, 0)).all()


def test_gradient_magnitude():
    const = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert allocation.gradient_magnitude(const).tolist() == [0.0, 0.0]
    ramp = torch.arange(16, dtype=torch.uint8).mul(10).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    # grey (equal channels): Y = value / 255, dx = 10 / 255 everywhere, dy = 0
    assert allocation.gradient_magnitude(ramp)[0] == pytest.approx(10 / 255, rel=1e-6)
    half = ramp // 2  # values 0..75
    diag = half + half.transpose(2, 3)  # dx = dy = 5/255 everywhere
    assert allocation.gradient_magnitude(diag)[0] == pytest.approx(np.sqrt(2) * 5 / 255, rel=1e-6)


def test_background_fraction_hand_made():
    img = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    img[..., :6, :] = torch.tensor([20, 30, 40], dtype=torch.uint8).view(1, 3, 1, 1)  # 60 px: the mode
    img[..., 6, :5] = torch.tensor([24, 26, 40], dtype=torch.uint8).view(1, 3, 1)  # 5 px within 4 of the mode
    img[..., 6, 5:] = torch.tensor([20, 30, 49], dtype=torch.uint8).view(1, 3, 1)  # 5 px 9 away in blue
    img[..., 7:, :] = 200  # 30 px far away
    assert allocation.background_fraction(img, tolerance=0)[0] == pytest.approx(0.60)
    assert allocation.background_fraction(img, tolerance=4)[0] == pytest.approx(0.65)
    assert allocation.background_fraction(img, tolerance=9)[0] == pytest.approx(0.70)
    # ties between two equally frequent colours: the smaller 0xRRGGBB wins -> the same share either way
    half = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    half[..., 2:, :] = 255
    assert allocation.background_fraction(half, 0)[0] == pytest.approx(0.5)
    table = allocation.complexity(torch.cat([img, img]))
    assert list(table.columns) == list(allocation.MEASURES) and len(table) == 2


def test_spearman_ci_known_answers_and_seeding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    r = allocation.spearman_ci(x, y, n_boot=1000, seed=1)
    assert r["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert r["lo"] < r["rho"] < r["hi"] and 0 < r["lo"] and r["hi"] < 1
    assert r["n"] == 200 and r["valid"] == 1000 and r["p"] < 1e-6
    assert allocation.spearman_ci(x, y, n_boot=1000, seed=1) == r
    assert allocation.spearman_ci(x, y, n_boot=1000, seed=2)["lo"] != r["lo"]
    # a monotone map is a perfect rank correlation, whatever its shape; a reversed one is -1
    mono = allocation.spearman_ci(x, np.exp(3 * x), n_boot=200)
    assert mono["rho"] == pytest.approx(1.0) and mono["lo"] == pytest.approx(1.0)
    assert allocation.spearman_ci(x, -x ** 3, n_boot=50)["hi"] == pytest.approx(-1.0)
    # ties (integer distinct-code counts) use average ranks, as scipy does
    xi = rng.integers(0, 4, size=300)
    yi = xi + rng.normal(size=300)
    assert allocation.spearman_ci(xi, yi, n_boot=100)["rho"] == pytest.approx(stats.spearmanr(xi, yi).statistic)


def test_correlation_table_per_class_and_overall():
    rng = np.random.default_rng(0)
    n = 120
    cls = np.repeat(["a", "b"], n // 2)
    png = rng.normal(size=n)
    distinct = np.where(cls == "a", png, -png) + 0.1 * rng.normal(size=n)  # +1 in class a, -1 in class b
    df = pd.DataFrame(dict(distinct=distinct, png_bytes=png, gradient=rng.normal(size=n),
                           background=rng.normal(size=n), **{"class": cls}))
    table = allocation.correlation_table(df, n_boot=200).set_index(["class", "measure"])
    assert set(table.index.get_level_values(0)) == {"all", "a", "b"}
    assert table.loc[("a", "png_bytes"), "rho"] > 0.9 and table.loc[("b", "png_bytes"), "rho"] < -0.9
    assert abs(table.loc[("all", "png_bytes"), "rho"]) < 0.3
    assert (table.lo <= table.rho).all() and (table.rho <= table.hi).all()


def test_decoder_accepts_fewer_tokens_for_the_set_arm_only():
    torch.manual_seed(0)
    model = randomized(SetTokenizer(TokenizerConfig.preset("tiny"))).eval()
    m = model.cfg.num_tokens
    tokens = torch.randint(0, model.cfg.codebook_size, (2, m), generator=torch.Generator().manual_seed(1))
    codes = model.quantizer.indices_to_codes(tokens)
    with torch.no_grad():
        out = model.decode_codes(codes[:, : m - 3], shuffle=False)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    ordered = randomized(SetTokenizer(TokenizerConfig.preset("tiny", ordered=True))).eval()
    with pytest.raises(RuntimeError):
        ordered.decode_codes(codes[:, : m - 3], shuffle=False)
    with pytest.raises(ValueError, match="expected a set tokenizer"):
        allocation.code_influence(ordered, tokens)


def test_code_influence_matches_direct_decodes():
    torch.manual_seed(0)
    model = randomized(SetTokenizer(TokenizerConfig.preset("tiny"))).eval()
    tokens = torch.tensor([[3, 3, 3, 7, 7, 9, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8], [5, 5, 5, 5, 5, 5, 5, 0]])
    out = allocation.code_influence(model, tokens)
    assert len(out) == 3
    assert sorted(out[0].codes.tolist()) == [3, 7, 9, 11, 12]
    assert dict(zip(out[0].codes.tolist(), out[0].counts.tolist())) == {3: 3, 7: 2, 9: 1, 11: 1, 12: 1}
    assert len(out[1].codes) == 8 and sorted(out[2].codes.tolist()) == [0, 5]
    with torch.no_grad():
        assert torch.allclose(out[0].full, model.decode(tokens)[0], atol=1e-5)
        # removing all three copies of code 3 leaves [7, 7, 9, 11, 12]
        without3 = model.decode_codes(model.quantizer.indices_to_codes(torch.tensor([[7, 7, 9, 11, 12]])),
                                      shuffle=False).clamp(-1, 1)
    k = out[0].codes.tolist().index(3)
    assert torch.allclose(out[0].maps[k], (out[0].full - without3[0]).abs().mean(dim=0), atol=1e-5)
    for item in out:  # ordered by decreasing total influence, non-negative
        totals = item.maps.flatten(1).sum(dim=1)
        assert (totals[:-1] >= totals[1:]).all() and (item.maps >= 0).all()
        assert item.maps.shape == (len(item.codes), 16, 16)
    # the decode without a code does not depend on the order of the full set (a set decoder)
    again = allocation.code_influence(model, tokens.flip(1))
    assert torch.allclose(again[0].maps, out[0].maps, atol=1e-5)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match=r"expected two 1-D arrays of equal length, got shapes \(3,\) and \(4,\)"):
        allocation.spearman_ci([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least 3 pairs"):
        allocation.spearman_ci([1, 2], [1, 2])
    with pytest.raises(ValueError, match="n_boot: expected a positive int"):
        allocation.spearman_ci([1, 2, 3], [1, 2, 3], n_boot=0)
    with pytest.raises(ValueError, match="expected finite numbers"):
        allocation.spearman_ci([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match=r"images: expected a non-empty uint8 tensor \(N, 3, H, W\), got torch.float"):
        allocation.png_bytes(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="compress_level: expected an int in"):
        allocation.png_bytes(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), compress_level=10)
    with pytest.raises(ValueError, match="tolerance: expected an int in"):
        allocation.background_fraction(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), tolerance=-1)
    with pytest.raises(ValueError, match=r"tokens: expected codes in \[0, 4\), got values in \[0, 4\]"):
        allocation.code_stats(torch.tensor([[0, 4]]), 4)
    with pytest.raises(ValueError, match="per_image: expected a DataFrame with columns"):
        allocation.correlation_table(pd.DataFrame(dict(distinct=[1, 2, 3])))
    model = SetTokenizer(TokenizerConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match=r"tokens: expected shape \(N, 8\)"):
        allocation.code_influence(model, torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="single code repeated M times"):
        allocation.code_influence(model, torch.zeros(1, 8, dtype=torch.long))
