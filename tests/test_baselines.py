"""Baselines (tokenset.baselines): masked discrete diffusion and autoregressive transformer over token sequences."""

import math

import pytest
import torch

from tokenset.baselines import ARTokenTransformer, MaskedTokenTransformer, autoregressive, masked
from tokenset.config import DenoiserConfig
from tokenset.denoiser import CountDiT, count_parameters
from tests.helpers import randomized


def cfg_for(codebook_size=16, total=8, **kw):
    return DenoiserConfig.preset("tiny", codebook_size=codebook_size, total=total, **kw)


def sorted_tokens(cfg, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.codebook_size, (batch, cfg.total), generator=g).sort(dim=1).values


# --------------------------------------------------------------------------------------------- fairness


def test_same_blocks_as_countdit():
    # same DenoiserConfig -> identical transformer trunk (width, depth, heads, mlp): the comparison is fair.
    # Totals at C=512, M=64, small preset are stated in the module docstrings.
    cfg = DenoiserConfig.preset("small", codebook_size=512, total=64)
    fsdd, mdm, ar = CountDiT(cfg), MaskedTokenTransformer(cfg), ARTokenTransformer(cfg)
    trunk = [sum(count_parameters(b) for b in m.blocks) for m in (fsdd, mdm, ar)]
    assert trunk[0] == trunk[1] == trunk[2] > 0
    assert len(fsdd.blocks) == len(mdm.blocks) == len(ar.blocks) == cfg.depth
    totals = [count_parameters(m) for m in (fsdd, mdm, ar)]
    assert max(totals) / min(totals) < 1.1, totals


# --------------------------------------------------------------------------------------------- masked


@pytest.mark.parametrize("batch", [1, 3])
def test_masked_forward_shape(batch):
    cfg = cfg_for()
    model = randomized(MaskedTokenTransformer(cfg)).eval()
    tokens = sorted_tokens(cfg, batch)
    tokens[:, ::2] = model.mask_id
    out = model(tokens, torch.zeros(batch, dtype=torch.long))
    assert model.mask_id == cfg.codebook_size
    assert model.null_label == cfg.num_classes
    assert out.shape == (batch, cfg.total, cfg.codebook_size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_masked_training_mask_follows_cosine_schedule():
    # mean of cos(pi r / 2) over r ~ U(0, 1) is 2 / pi; ceil adds < 1 / M per row
    cfg = cfg_for(total=32)
    model = MaskedTokenTransformer(cfg)
    fracs = [masked.training_loss(model, sorted_tokens(cfg, 64, s), torch.zeros(64, dtype=torch.long),
                                  generator=torch.Generator().manual_seed(s))["mask_fraction"].item()
             for s in range(8)]
    mean = sum(fracs) / len(fracs)
    # sd of the mean over 512 rows ~ 0.013; plus the ceil bias (< 1/32)
    assert 2 / math.pi - 0.05 < mean < 2 / math.pi + 1 / 32 + 0.05, mean


@pytest.mark.parametrize("steps", [1, 3, 8, 13])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("batch", [1, 4])
def test_masked_sampler_returns_no_mask_tokens(steps, guidance, batch):
    cfg = cfg_for()
    model = randomized(MaskedTokenTransformer(cfg)).train()  # sampler must not apply class dropout anyway
    labels = torch.arange(batch) % (cfg.num_classes + 1)
    out = masked.sample(model, labels, steps=steps, guidance=guidance, choice_temperature=1.0,
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == (batch, cfg.total) and out.dtype == torch.int64
    assert (out >= 0).all() and (out < cfg.codebook_size).all()


def test_masked_sampler_unmasks_on_cosine_schedule():
    cfg = cfg_for(total=16)
    model = randomized(MaskedTokenTransformer(cfg)).eval()
    seen = []
    real = model.forward

    def spy(tokens, labels, **kw):
        seen.append((tokens == model.mask_id).sum(dim=1).tolist())
        return real(tokens, labels, **kw)

    model.forward = spy
    steps = 5
    masked.sample(model, torch.tensor([0, 1]), steps=steps, generator=torch.Generator().manual_seed(0))
    expected = [16] + [math.floor(16 * math.cos(math.pi / 2 * s / steps)) for s in range(1, steps)]
    assert seen == [[e, e] for e in expected]


def test_masked_sampler_is_deterministic_given_generator():
    cfg = cfg_for()
    model = randomized(MaskedTokenTransformer(cfg)).eval()
    a = masked.sample(model, torch.tensor([1, 2]), steps=4, generator=torch.Generator().manual_seed(7))
    b = masked.sample(model, torch.tensor([1, 2]), steps=4, generator=torch.Generator().manual_seed(7))
    c = masked.sample(model, torch.tensor([1, 2]), steps=4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masked_overfit_then_sample_reproduces_data():
    # one sequence per class: the loss falls and sampling at low temperature returns the class's sequence
    torch.manual_seed(0)
    cfg = cfg_for(num_classes=2, class_dropout=0.0, depth=2)
    model = MaskedTokenTransformer(cfg).train()
    data = sorted_tokens(cfg, 2, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1]).repeat(16)
    losses = []
    for _ in range(150):
        loss = masked.training_loss(model, data[labels], labels, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cfg.codebook_size), rel=1e-4)
    assert sum(losses[-10:]) / 10 < 0.1 * losses[0], losses[-10:]
    out = masked.sample(model.eval(), torch.tensor([0, 1]), steps=4, temperature=0.05,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, data)


# --------------------------------------------------------------------------------------------- autoregressive


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [0, 1, 7])
def test_ar_forward_shape(batch, length):
    cfg = cfg_for()
    model = randomized(ARTokenTransformer(cfg)).eval()
    out = model(sorted_tokens(cfg, batch)[:, :length], torch.zeros(batch, dtype=torch.long))
    assert out.shape == (batch, length + 1, cfg.codebook_size) and out.dtype == torch.float32


@pytest.mark.parametrize("j", [0, 3, 6])
def test_ar_is_causal(j):
    cfg = cfg_for(depth=2)
    model = randomized(ARTokenTransformer(cfg)).eval()
    prefix = sorted_tokens(cfg, 2)[:, :-1]  # (2, M - 1)
    labels = torch.tensor([0, 3])
    base = model(prefix, labels)
    changed = prefix.clone()
    changed[:, j] = (changed[:, j] + 5) % cfg.codebook_size
    out = model(changed, labels)
    # output position i reads t_<i: positions 0..j do not see t_j, positions j+1.. do
    torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], rtol=0, atol=1e-6)
    assert (out[:, j + 1:] - base[:, j + 1:]).abs().amax(dim=-1).min() > 1e-4


def test_ar_prefix_logits_match_full_sequence():
    # recompute sampling relies on this: the logits of a prefix are the first rows of a longer sequence's logits
    cfg = cfg_for()
    model = randomized(ARTokenTransformer(cfg)).eval()
    tok = sorted_tokens(cfg, 2)
    full = model(tok[:, :-1], torch.tensor([1, 2]))
    for n in range(cfg.total):
        torch.testing.assert_close(model(tok[:, :n], torch.tensor([1, 2])), full[:, : n + 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("batch", [1, 4])
def test_ar_sampler_shapes_and_ranges(guidance, batch):
    cfg = cfg_for()
    model = randomized(ARTokenTransformer(cfg)).eval()
    labels = torch.arange(batch) % (cfg.num_classes + 1)
    out = autoregressive.sample(model, labels, top_p=0.9, guidance=guidance,
                                generator=torch.Generator().manual_seed(0))
    assert out.shape == (batch, cfg.total) and out.dtype == torch.int64
    assert (out >= 0).all() and (out < cfg.codebook_size).all()


def test_ar_non_decreasing_option():
    cfg = cfg_for()
    model = randomized(ARTokenTransformer(cfg)).eval()
    labels = torch.arange(8) % cfg.num_classes
    free = autoregressive.sample(model, labels, generator=torch.Generator().manual_seed(0))
    mono = autoregressive.sample(model, labels, generator=torch.Generator().manual_seed(0), non_decreasing=True)
    assert (mono[:, 1:] >= mono[:, :-1]).all()
    assert not (free[:, 1:] >= free[:, :-1]).all()  # the untrained model does not sort by itself


def test_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda p: torch.isfinite(autoregressive.top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1e-6) == [True, False, False, False]


def test_ar_overfit_then_sample_reproduces_data():
    torch.manual_seed(0)
    cfg = cfg_for(num_classes=2, class_dropout=0.0, depth=2)
    model = ARTokenTransformer(cfg).train()
    data = sorted_tokens(cfg, 2, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    labels = torch.tensor([0, 1]).repeat(8)
    losses = []
    for _ in range(100):
        loss = autoregressive.training_loss(model, data[labels], labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cfg.codebook_size), rel=1e-4)
    assert sum(losses[-10:]) / 10 < 0.05 * losses[0], losses[-10:]
    out = autoregressive.sample(model.eval(), torch.tensor([0, 1]), temperature=0.05, top_p=0.9,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, data)


# --------------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_masked():
    cfg = cfg_for()
    model = MaskedTokenTransformer(cfg)
    tok, y = sorted_tokens(cfg, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"tokens: expected values in \[0, 15\], got values in \[\d+, 16\]"):
        bad = tok.clone()
        bad[0, 0] = model.mask_id  # the data must not contain the mask id
        masked.training_loss(model, bad, y)
    with pytest.raises(ValueError, match=r"tokens: expected shape \(\*, 8\), got \(2, 7\)"):
        masked.training_loss(model, tok[:, :7], y)
    with pytest.raises(ValueError, match="tokens: expected dtype torch.int64"):
        model(tok.float(), y)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 10\]"):
        masked.training_loss(model, tok, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="steps: expected an integer >= 1, got 0"):
        masked.sample(model, y, steps=0)
    with pytest.raises(ValueError, match="temperature"):
        masked.sample(model, y, temperature=0.0)
    with pytest.raises(ValueError, match="guidance"):
        masked.sample(model, y, guidance=-1.0)
    with pytest.raises(ValueError, match="choice_temperature"):
        masked.sample(model, y, choice_temperature=-1.0)


def test_bad_inputs_autoregressive():
    cfg = cfg_for()
    model = ARTokenTransformer(cfg)
    tok, y = sorted_tokens(cfg, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"prefix: expected length at most M - 1 = 7, got 8"):
        model(tok, y)
    with pytest.raises(ValueError, match=r"tokens: expected values in \[0, 15\]"):
        autoregressive.training_loss(model, tok + 16, y)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\), got \(3,\)"):
        autoregressive.training_loss(model, tok, torch.tensor([0, 1, 2]))
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p: expected a number in \(0, 1\]"):
            autoregressive.sample(model, y, top_p=top_p)
    with pytest.raises(ValueError, match="temperature"):
        autoregressive.sample(model, y, temperature=-1.0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(\*,\)"):
        autoregressive.sample(model, y[:, None])
