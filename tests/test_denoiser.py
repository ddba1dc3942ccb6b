"""CountDiT (tokenset.denoiser): shapes, conditioning, class dropout, parameter counts, input checks, training."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenset.config import DenoiserConfig
from tokenset.denoiser import CountDiT, LabelEmbedder, count_parameters
from tests.helpers import randomized


def tiny(codebook_size=12, total=6, **kw):
    return DenoiserConfig.preset("tiny", codebook_size=codebook_size, total=total, **kw)


def inputs(cfg, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, cfg.total + 1, (batch, cfg.codebook_size), generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g)
    return z, t, y


# --------------------------------------------------------------------------------------------- shapes


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_logits_shape_dtype_finite(batch, codebook_size, total, seed):
    # includes batch 1, C < M and C > M
    cfg = tiny(codebook_size, total)
    model = randomized(CountDiT(cfg), seed % 1000).eval()
    z, t, y = inputs(cfg, batch, seed)
    out = model(z, t, y)
    assert out.shape == (batch, codebook_size, total + 1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_initial_logits_are_uniform():
    # adaLN-Zero: the read-out starts at zero, so every position starts at the uniform distribution over 0..M
    cfg = tiny()
    model = CountDiT(cfg).eval()
    out = model(*inputs(cfg, 3))
    assert torch.equal(out, torch.zeros_like(out))


def test_output_depends_on_other_positions_time_and_class():
    cfg = tiny()
    model = randomized(CountDiT(cfg)).eval()
    z, t, y = inputs(cfg, 2)
    base = model(z, t, y)
    z2 = z.clone()
    z2[:, 0] = (z2[:, 0] + 1) % (cfg.total + 1)
    # attention mixes positions: changing position 0 changes the logits at position 5
    assert not torch.allclose(model(z2, t, y)[:, 5], base[:, 5])
    assert not torch.allclose(model(z, (t + 0.3) % 1.0, y), base)
    assert not torch.allclose(model(z, t, (y + 1) % cfg.num_classes), base)


def test_uses_scaled_dot_product_attention(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    cfg = tiny(depth=3)
    CountDiT(cfg)(*inputs(cfg, 2))
    assert calls == [False, False, False]


# --------------------------------------------------------------------------------------------- classes


def test_null_label_is_num_classes_and_accepted():
    cfg = tiny(num_classes=7)
    model = randomized(CountDiT(cfg)).eval()
    assert model.null_label == 7
    z, t, _ = inputs(cfg, 2)
    out = model(z, t, torch.tensor([7, 7]))
    assert out.shape == (2, cfg.codebook_size, cfg.total + 1)


def test_class_dropout_rate():
    emb = LabelEmbedder(num_classes=5, width=4, dropout=0.1).train()
    labels = torch.randint(0, 5, (20_000,), generator=torch.Generator().manual_seed(0))
    dropped = emb.drop(labels, generator=torch.Generator().manual_seed(1)) == 5
    # binomial(20000, 0.1): sd 0.0021; 5 sd
    assert abs(dropped.float().mean().item() - 0.1) < 0.011
    kept = ~dropped
    out = emb.drop(labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[kept], labels[kept])
    # no dropout in eval mode
    assert torch.equal(emb.eval().drop(labels), labels)


def test_class_dropout_in_training_replaces_labels_by_null_class():
    cfg = tiny(class_dropout=0.5)
    model = randomized(CountDiT(cfg))
    z, t, y = inputs(cfg, 16, seed=3)
    y = y.clamp(max=cfg.num_classes - 1)
    model.train()
    out = model(z, t, y, generator=torch.Generator().manual_seed(0))
    # same generator, same draw: which rows were dropped
    drop = LabelEmbedder(cfg.num_classes, 1, 0.5).train().drop(y, generator=torch.Generator().manual_seed(0))
    dropped = drop == cfg.num_classes
    assert 0 < dropped.sum() < 16
    model.eval()
    cond = model(z, t, y)
    uncond = model(z, t, torch.full_like(y, model.null_label))
    torch.testing.assert_close(out[dropped], uncond[dropped])
    torch.testing.assert_close(out[~dropped], cond[~dropped])
    assert not torch.allclose(out[dropped], cond[dropped])


def test_force_drop_overrides_mode_and_generator_is_deterministic():
    cfg = tiny(class_dropout=0.5)
    model = randomized(CountDiT(cfg)).train()
    z, t, y = inputs(cfg, 6, seed=1)
    y = y.clamp(max=cfg.num_classes - 1)
    uncond = model(z, t, torch.full_like(y, cfg.num_classes), force_drop=torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(model(z, t, y, force_drop=torch.ones(6, dtype=torch.bool)), uncond)
    keep = model(z, t, y, force_drop=torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(keep, model.eval()(z, t, y))
    model.train()
    a = model(z, t, y, generator=torch.Generator().manual_seed(5))
    b = model(z, t, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_no_dropout_when_rate_is_zero():
    cfg = tiny(class_dropout=0.0)
    model = randomized(CountDiT(cfg))
    z, t, y = inputs(cfg, 8)
    torch.testing.assert_close(model.train()(z, t, y), model.eval()(z, t, y))


# --------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name, paper", [("S", 36e6), ("B", 137e6)])
def test_paper_parameter_counts(name, paper):
    cfg = DenoiserConfig.preset(name, codebook_size=4096, total=128)
    assert cfg.num_classes == 1000
    with torch.device("meta"):  # no memory, no init cost
        n = count_parameters(CountDiT(cfg))
    assert abs(n / paper - 1) < 0.05, n
    # the official code's count table has C + 1 rows instead of M + 1 (see tokenset.denoiser); with those
    # (C - M) * width unused rows added, the count rounds to the paper's number
    official = n + (cfg.codebook_size - cfg.total) * cfg.width
    assert round(official / 1e6) == round(paper / 1e6), official


def test_parameter_count_formula():
    # what we count, term by term (S at C=4096, M=128)
    cfg = DenoiserConfig.preset("S", codebook_size=4096, total=128)
    d, c, m, k, f = cfg.width, cfg.codebook_size, cfg.total, cfg.num_classes, cfg.time_freq_dim
    h = int(d * cfg.mlp_ratio)
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + (d * 6 * d + 6 * d)
    expected = ((m + 1) * d + c * d + (f * d + d + d * d + d) + (k + 1) * d + cfg.depth * block
                + (d * 2 * d + 2 * d) + (d * (m + 1) + m + 1))
    with torch.device("meta"):
        assert count_parameters(CountDiT(cfg)) == expected


def test_small_preset_is_cpu_sized():
    cfg = DenoiserConfig.preset("small", codebook_size=512, total=64)
    n = count_parameters(CountDiT(cfg))
    assert 1e5 < n < 2e6, n  # width 64, depth 3: ~0.29M (sized for 2 CPU cores)


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="heads"):
        DenoiserConfig.preset("tiny", codebook_size=8, total=4, heads=0)
    with pytest.raises(ValueError, match="mlp_ratio"):
        DenoiserConfig.preset("tiny", codebook_size=8, total=4, mlp_ratio=0.0)
    with pytest.raises(ValueError, match="width"):
        DenoiserConfig.preset("tiny", codebook_size=8, total=4, width=33)


# --------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case, match", [
    ("z_float", "z: expected dtype torch.int64"),
    ("z_int32", "z: expected dtype torch.int64"),
    ("z_wrong_c", r"z: expected shape \(\*, 12\), got \(2, 11\)"),
    ("z_1d", r"z: expected shape"),
    ("z_negative", r"z: expected values in \[0, 6\], got values in \[-1"),
    ("z_above_total", r"z: expected values in \[0, 6\]"),
    ("t_int", "t: expected a floating-point tensor"),
    ("t_shape", r"t: expected shape \(2,\), got \(3,\)"),
    ("t_range", r"t: expected values in \[0, 1\]"),
    ("t_nan", r"t: expected values in \[0, 1\]"),
    ("labels_range", r"labels: expected values in \[0, 10\], got values in \[0, 11\]"),
    ("labels_negative", r"labels: expected values in \[0, 10\]"),
    ("labels_shape", r"labels: expected shape \(2,\)"),
    ("labels_float", "labels: expected dtype torch.int64"),
    ("force_drop", "force_drop: expected a bool tensor"),
])
def test_bad_inputs(case, match):
    cfg = tiny()
    model = CountDiT(cfg)
    z, t, y = inputs(cfg, 2)
    y = y.clamp(max=cfg.num_classes - 1)
    kw = {}
    if case == "z_float":
        z = z.float()
    elif case == "z_int32":
        z = z.int()
    elif case == "z_wrong_c":
        z = z[:, :11]
    elif case == "z_1d":
        z = z[0]
    elif case == "z_negative":
        z[0, 0] = -1
    elif case == "z_above_total":
        z[1, 3] = cfg.total + 1
    elif case == "t_int":
        t = torch.tensor([0, 1])
    elif case == "t_shape":
        t = torch.rand(3)
    elif case == "t_range":
        t = torch.tensor([0.5, 1.5])
    elif case == "t_nan":
        t = torch.tensor([0.5, math.nan])
    elif case == "labels_range":
        y = torch.tensor([0, 11])
    elif case == "labels_negative":
        y = torch.tensor([-1, 0])
    elif case == "labels_shape":
        y = torch.tensor([0, 1, 2])
    elif case == "labels_float":
        y = y.float()
    elif case == "force_drop":
        kw["force_drop"] = torch.tensor([1, 0])
    with pytest.raises(ValueError, match=match):
        model(z, t, y, **kw)


# --------------------------------------------------------------------------------------------- training


def test_loss_decreases_on_tiny_overfit():
    # two classes, each with one fixed target count vector; inputs are random counts (as noisy z_t)
    torch.manual_seed(0)
    cfg = tiny(codebook_size=10, total=5, num_classes=2, class_dropout=0.0, width=32, depth=2)
    model = CountDiT(cfg).train()
    targets = torch.tensor([[5, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0, 1, 1]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        y = torch.randint(0, 2, (16,), generator=g)
        z = torch.randint(0, cfg.total + 1, (16, cfg.codebook_size), generator=g)
        t = torch.rand(16, generator=g)
        logits = model(z, t, y)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[y].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cfg.total + 1), rel=1e-4)  # uniform start
    # (the median resists the occasional spike of a high learning rate)
    assert sorted(losses[-10:])[5] < 0.2 * losses[0], losses[-10:]


# --------------------------------------------------------------------------------------------- patches


@pytest.mark.parametrize("patch", [2, 4])
def test_patch_shapes_and_positions(patch):
    cfg = tiny(codebook_size=12, total=5, patch=patch)
    model = randomized(CountDiT(cfg)).eval()
    assert model.pos_embed.shape[1] == 12 // patch  # C / p sequence positions
    assert model.count_embed.num_embeddings == patch * (cfg.total + 1)  # one count table per slot
    z, t, y = inputs(cfg, 3)
    out = model(z, t, y)
    assert out.shape == (3, 12, cfg.total + 1) and torch.isfinite(out).all()
    assert torch.equal(CountDiT(cfg).eval()(z, t, y), torch.zeros_like(out))  # adaLN-Zero: uniform at the start


def test_patch_slots_are_told_apart():
    # codes 0 and 1 share position 0 (patch 2): swapping their counts must change the logits of both codes
    cfg = tiny(codebook_size=8, total=4, patch=2)
    model = randomized(CountDiT(cfg)).eval()
    z, t, y = inputs(cfg, 2)
    z[:, 0], z[:, 1] = 3, 0
    swapped = z.clone()
    swapped[:, 0], swapped[:, 1] = 0, 3
    assert not torch.allclose(model(z, t, y)[:, :2], model(swapped, t, y)[:, :2])


def test_patch_must_divide_the_codebook():
    with pytest.raises(ValueError, match="key 'patch' is 5; expected a divisor of codebook_size=12"):
        tiny(codebook_size=12, patch=5)
    with pytest.raises(ValueError, match="'patch'"):
        tiny(patch=0)


def test_small_preset_patches_eight_codes_per_position():
    cfg = DenoiserConfig.preset("small", codebook_size=1024, total=64)
    assert cfg.patch == 8 and CountDiT(cfg).pos_embed.shape[1] == 128
