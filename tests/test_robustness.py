"""Robustness to input noise: SNR-calibrated noise, multiset vs position-wise kept shares, bootstrap summaries."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tokenset import robustness
from tokenset.config import TokenizerConfig
from tokenset.tokenizer import SetTokenizer


def test_multiset_kept_hand_made():
    clean = torch.tensor([[1, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]])
    noisy = torch.tensor([[1, 2, 2, 4], [0, 0, 1, 1], [8, 7, 6, 5]])
    # row 0: min counts: code1 min(2,1)=1, code2 min(1,2)=1, code3 min(1,0)=0 -> 2/4
    # row 1: code0 min(4,2)=2 -> 2/4; row 2: same multiset in another order -> 4/4
    kept = robustness.multiset_kept(clean, noisy, codebook_size=10)
    assert kept.tolist() == [0.5, 0.5, 1.0]
    assert kept.dtype == torch.float32
    # chunking does not change the answer
    assert robustness.multiset_kept(clean, noisy, 10, chunk=1).tolist() == kept.tolist()


def test_position_vs_multiset_on_a_permuted_copy():
    g = torch.Generator().manual_seed(0)
    clean = torch.randperm(64, generator=g)[:16].view(2, 8)  # distinct codes: a permutation moves every token
    perm = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])  # a cyclic shift: no token stays in place
    noisy = clean[:, perm]
    assert robustness.multiset_kept(clean, noisy, 64).tolist() == [1.0, 1.0]
    assert robustness.position_kept(clean, noisy).tolist() == [0.0, 0.0]
    assert robustness.position_kept(clean, clean).tolist() == [1.0, 1.0]
    one_changed = clean.clone()
    one_changed[0, 3] = 63 if int(clean[0, 3]) != 63 else 62
    assert robustness.position_kept(clean, one_changed).tolist() == [7 / 8, 1.0]


def test_position_kept_is_a_lower_bound_of_multiset_kept():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 6, (200, 10), generator=g)
    b = torch.randint(0, 6, (200, 10), generator=g)
    assert bool((robustness.position_kept(a, b) <= robustness.multiset_kept(a, b, 6) + 1e-7).all())


@pytest.mark.parametrize("signal", ["power", "variance"])
def test_added_noise_has_the_requested_snr(signal):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 256, 256, generator=g) * 1.6 - 0.9  # large images: the measured SNR is tight
    for snr in robustness.SNR_DB:
        noisy = robustness.add_noise(images, snr, torch.Generator().manual_seed(2), signal=signal, clamp=False)
        measured = robustness.measured_snr_db(images, noisy, signal)
        assert measured.shape == (3,)
        assert torch.allclose(measured, torch.full((3,), snr), atol=0.05), (snr, measured)


def test_noise_is_seeded_and_clamped():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = robustness.add_noise(images, 1.0, torch.Generator().manual_seed(5))
    b = robustness.add_noise(images, 1.0, torch.Generator().manual_seed(5))
    c = robustness.add_noise(images, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    # at 1 dB the clamp removes part of the noise: the encoder sees a higher SNR than asked for
    assert float(robustness.measured_snr_db(images, a).mean()) > 1.5
    # power vs variance: a dark image with little contrast gets much more noise under "power"
    dark = torch.full((1, 3, 64, 64), -0.8) + 0.01 * torch.randn(1, 3, 64, 64, generator=torch.Generator())
    assert float(robustness.signal_power(dark, "power")) > 100 * float(robustness.signal_power(dark, "variance"))


class StripTokenizer(SetTokenizer):
    """A tokenizer with a known answer: token k = the mean of horizontal strip k of the image, in 32 levels.
    The set arm returns its tokens sorted (an order that moves when one value changes), the ordered arm by strip."""

    def encode(self, images):
        self._check_images(images)
        m, c = self.cfg.num_tokens, self.cfg.codebook_size
        strips = images.mean(dim=(1, 3)).view(len(images), m, -1).mean(dim=2)  # (B, M) in [-1, 1]
        tokens = ((strips + 1) / 2 * c).floor().long().clamp(0, c - 1)
        return tokens if self.cfg.ordered else tokens.sort(dim=1).values


def strip_images(n, seed=0):
    """uint8 (n, 3, 16, 16): 8 strips of 2 rows, each one random grey level."""
    levels = torch.randint(0, 256, (n, 1, 8, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return levels.repeat_interleave(2, dim=2).expand(n, 3, 16, 16).contiguous()


def test_kept_shares_and_summary_on_a_known_tokenizer():
    images = strip_images(40)
    frames = []
    for arm, ordered in (("set", False), ("ordered", True)):
        model = StripTokenizer(TokenizerConfig.preset("tiny", ordered=ordered)).eval()
        assert model.cfg.num_tokens == 8 and model.cfg.image_size == 16
        per = robustness.kept_shares(model, images, snr_db=[60, 10, -5], draws=2, seed=0, batch_size=16)
        assert len(per) == 40 * 3 * 2 and set(per.metric) == set(robustness.METRICS)
        assert per.kept.between(0, 1).all()
        ms = per[per.metric == "multiset"].set_index(["snr_db", "image"]).kept
        ps = per[per.metric == "position"].set_index(["snr_db", "image"]).kept
        assert (ps <= ms + 1e-6).all()
        # 60 dB: strip means move by ~1e-4, far below a level (1/16): nearly every token is kept
        assert ms.loc[60].mean() > 0.95
        assert ms.loc[60].mean() > ms.loc[10].mean() > ms.loc[-5].mean()
        # the clamp keeps the SNR the encoder saw above the requested one at -5 dB
        seen = per[per.metric == "multiset"].set_index("snr_db").measured_snr_db
        assert abs(seen.loc[60].mean() - 60) < 0.5 and seen.loc[-5].mean() > -5
        frames.append(per.assign(arm=arm))
    both = pd.concat(frames)
    # the same noise for both arms: the strip means, hence the multisets, change identically
    a = both[(both.arm == "set") & (both.metric == "multiset")].kept.to_numpy()
    b = both[(both.arm == "ordered") & (both.metric == "multiset")].kept.to_numpy()
    assert np.allclose(a, b)
    # sorted tokens shift position when one value changes: the position metric understates the set arm
    set_pos = both[(both.arm == "set") & (both.metric == "position") & (both.snr_db == 10)].kept.mean()
    set_ms = both[(both.arm == "set") & (both.metric == "multiset") & (both.snr_db == 10)].kept.mean()
    assert set_pos < set_ms
    table = robustness.summarise(both, n_boot=200)
    assert len(table) == 2 * 2 * 3
    assert list(table.arm.unique()) == ["set", "ordered"]
    nat = table.groupby(["arm", "metric"]).natural.first()
    assert nat["set", "multiset"] and nat["ordered", "position"]
    assert not nat["set", "position"] and not nat["ordered", "multiset"]
    assert (table.kept_lo <= table.kept_mean + 1e-12).all() and (table.kept_mean <= table.kept_hi + 1e-12).all()
    assert (table.kept_lo < table.kept_hi).any()
    assert (table.images == 40).all()
    # the measured SNR stands beside the nominal one, and the clamp shows at -5 dB
    cols = list(table.columns)
    assert cols.index("measured_snr_db") == cols.index("snr_db") + 1
    low = table[table.snr_db == -5].measured_snr_db
    assert (low > -5).all() and (table[table.snr_db == 60].measured_snr_db - 60).abs().max() < 0.5


def test_bad_inputs_raise_value_error():
    a = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"differ in shape: \(2, 4\) vs \(2, 3\)"):
        robustness.multiset_kept(a, torch.zeros(2, 3, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="noisy tokens: expected an integer tensor"):
        robustness.position_kept(a, a.float())
    with pytest.raises(ValueError, match=r"expected codes in \[0, 8\), got values in \[0, 9\]"):
        robustness.multiset_kept(a, torch.tensor([[0, 0, 0, 9], [0, 0, 0, 0]]), 8)
    with pytest.raises(ValueError, match="codebook_size: expected a positive int"):
        robustness.multiset_kept(a, a, 0)
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="signal: expected 'power'"):
        robustness.add_noise(images, 10.0, signal="rms")
    with pytest.raises(ValueError, match="snr_db: expected a finite number"):
        robustness.add_noise(images, math.inf)
    with pytest.raises(ValueError, match="images: expected a float tensor"):
        robustness.add_noise(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 10.0)
    with pytest.raises(ValueError, match="noise: expected a float tensor of the images' shape"):
        robustness.add_noise(images, 10.0, noise=torch.zeros(1, 3, 4, 4))
    model = SetTokenizer(TokenizerConfig.preset("tiny")).eval()
    u8 = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="draws: expected a positive int"):
        robustness.kept_shares(model, u8, draws=0)
    with pytest.raises(ValueError, match="snr_db: expected at least one SNR level"):
        robustness.kept_shares(model, u8, snr_db=[])
    with pytest.raises(ValueError, match="per_image: expected a DataFrame with columns"):
        robustness.summarise(pd.DataFrame(dict(kept=[1.0])))


def _per_image(arm, offset):
    rows = []
    for snr in (20.0, 10.0):
        for metric in robustness.METRICS:
            for image in range(4):
                kept = 0.5 + offset + (0.1 if metric == "multiset" else 0.0) + (0.2 if snr == 20.0 else 0.0)
                rows.append(dict(arm=arm, image=image, snr_db=snr, metric=metric, kept=kept, measured_snr_db=snr + 1))
    return pd.DataFrame(rows)


def test_natural_means_pick_each_arms_metric():
    means = robustness.natural_means(pd.concat([_per_image("set", 0.0), _per_image("ordered", 0.0)]))
    got = means.set_index(["arm", "snr_db"])["kept_mean"]
    assert got["set", 20.0] == pytest.approx(0.8)  # multiset
    assert got["ordered", 20.0] == pytest.approx(0.7)  # position
    with pytest.raises(ValueError, match="columns"):
        robustness.natural_means(pd.DataFrame(dict(arm=["set"])))


def test_compare_seeds_pairs_the_arms_by_seed():
    per_seed = pd.concat([robustness.natural_means(pd.concat([_per_image("set", 0.01 * s),
                                                              _per_image("ordered", 0.02 * s)])).assign(seed=s)
                          for s in range(3)])
    table = robustness.compare_seeds(per_seed).set_index("snr_db")
    # set - ordered per seed: 0.1 + 0.01 s - 0.02 s = 0.1, 0.09, 0.08 -> mean 0.09, std 0.01
    assert table.loc[20.0, "diff"] == pytest.approx(0.09)
    assert table.loc[20.0, "std"] == pytest.approx(0.01)
    assert table.loc[20.0, "ci_low"] < 0.09 < table.loc[20.0, "ci_high"]
    assert table.loc[20.0, "seeds"] == 3
    assert list(table.index) == [20.0, 10.0]
    with pytest.raises(ValueError, match="no rows of arm 'ordered'"):
        robustness.compare_seeds(per_seed[per_seed.arm == "set"])


def test_describe_one_cell():
    table = pd.DataFrame([dict(arm="set", metric="multiset", snr_db=20.0, kept_mean=0.5, kept_lo=0.4, kept_hi=0.6)])
    assert robustness.describe(table, "set", "multiset", 20.0) == "50.0% [40.0, 60.0]"
    with pytest.raises(ValueError, match="found 0"):
        robustness.describe(table, "set", "position", 20.0)
