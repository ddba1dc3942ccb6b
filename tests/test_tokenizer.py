"""SetTokenizer: shapes, ranges, the set property (decode is order-invariant), the ordered control, bad input."""

from __future__ import annotations

import pytest
import torch

from tokenset.bijection import canonical_order, set_to_counts
from tokenset.config import TokenizerConfig
from tokenset.tokenizer import SetTokenizer

ATOL = 1e-5  # "float rounding" for decodes in [-1, 1]


def _images(b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: (B, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)


def _model(seed: int = 0, **overrides) -> SetTokenizer:
    torch.manual_seed(seed)
    return SetTokenizer(TokenizerConfig.preset("tiny", **overrides)).eval()


def _random_tokens(b: int, cfg: TokenizerConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.codebook_size, (b, cfg.num_tokens), generator=g)


def _permute_rows(tokens: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(tokens.shape[1], generator=g) for _ in range(tokens.shape[0])])
    return tokens.gather(1, perm)


def _amplify_tokens(model: SetTokenizer, factor: float = 30.0) -> SetTokenizer:
    """Scale up the decoder's token projection and sharpen its attention, as training does over time (at init
    the tokens barely matter and attention is nearly uniform, which averages any order away): makes a dependence
    on token order visible well above float rounding."""
    with torch.no_grad():
        model.decoder.token_embed.weight.mul_(factor)
        for block in model.decoder.transformer.blocks:
            block.attn.q.weight.mul_(10.0)
            block.attn.kv.weight[: block.attn.kv.weight.shape[0] // 2].mul_(10.0)  # the keys
    return model


def _train_a_few_steps(model: SetTokenizer, steps: int = 5) -> SetTokenizer:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for s in range(steps):
        _, out = model(_images(8, seed=100 + s))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval()


# --------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("ordered", [False, True])
def test_shapes_dtypes_ranges(batch, ordered):
    model = _model(ordered=ordered)
    cfg = model.cfg
    x = _images(batch)
    tokens = model.encode(x)
    assert tokens.shape == (batch, cfg.num_tokens) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < cfg.codebook_size
    y = model.decode(tokens)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.detach().min()) >= -1 and float(y.detach().max()) <= 1
    recon, out = model.train()(x)
    assert recon.shape == x.shape
    for key in ("loss", "recon_loss", "quant_loss", "usage", "entropy", "perplexity"):
        assert out[key].ndim == 0 and torch.isfinite(out[key])
    assert 0 < float(out["usage"]) <= 1


@pytest.mark.parametrize("head", ["linear", "conv", "vqgan"])
def test_pixel_heads(head):
    model = _model(pixel_head=head, head_channels=8)
    y = model.decode(_random_tokens(2, model.cfg))
    assert y.shape == (2, 3, 16, 16)


def test_vqgan_head_at_patch_16():
    cfg = TokenizerConfig.preset("tiny", image_size=32, patch_size=16, pixel_head="vqgan", head_channels=8)
    model = SetTokenizer(cfg).eval()
    assert model.decode(_random_tokens(1, cfg)).shape == (1, 3, 32, 32)


def test_encode_matches_forward_tokens():
    model = _model()
    x = _images(4)
    _, tokens, _ = model.quantize(x)
    assert torch.equal(tokens, model.encode(x))


# --------------------------------------------------------------------------------------------- the set property


def _max_order_effect(model: SetTokenizer, tokens: torch.Tensor, perms: int = 5) -> float:
    with torch.no_grad():
        base = model.decode(tokens)
        return max(float((model.decode(_permute_rows(tokens, seed)) - base).abs().max()) for seed in range(perms))


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("decoder_input", ["set", "mean", "pma"])
def test_decode_is_permutation_invariant_at_init(batch, decoder_input):
    model = _model(seed=batch, decoder_input=decoder_input)
    tokens = _random_tokens(batch, model.cfg, seed=batch)
    order_effect = _max_order_effect(model, tokens)
    assert order_effect <= ATOL
    with torch.no_grad():  # ... and the decoder does read the tokens (invariance is not vacuous)
        other = model.decode(_random_tokens(batch, model.cfg, seed=99))
        token_effect = float((other - model.decode(tokens)).abs().max())
    assert token_effect > 2e-5 and token_effect > 100 * order_effect


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("amplify", [False, True])
def test_decode_is_permutation_invariant_after_training(batch, amplify):
    model = _train_a_few_steps(_model(seed=2))
    if amplify:
        _amplify_tokens(model)
    tokens = model.encode(_images(batch, seed=7))
    assert _max_order_effect(model, tokens) <= ATOL
    # the canonical (ascending), reversed and descending orders as well
    with torch.no_grad():
        base = model.decode(tokens)
        for t in (canonical_order(tokens), tokens.flip(1), canonical_order(tokens).flip(1)):
            assert float((model.decode(t) - base).abs().max()) <= ATOL


@pytest.mark.parametrize("batch", [1, 4])
def test_ordered_control_is_not_invariant(batch):
    model = _amplify_tokens(_train_a_few_steps(_model(seed=3, ordered=True)))
    tokens = _random_tokens(batch, model.cfg, seed=4)
    assert _max_order_effect(model, tokens) > 100 * ATOL
    same = _amplify_tokens(_train_a_few_steps(_model(seed=3, ordered=False)))  # the set twin: invariant
    assert _max_order_effect(same, tokens) <= ATOL


def test_training_shuffle_does_not_change_the_set_decoder():
    """In training mode the set decoder sees each sample's tokens in a random order; its output is the same."""
    model = _model(seed=5)
    codes = model.quantizer.indices_to_codes(_random_tokens(3, model.cfg))
    with torch.no_grad():
        fixed = model.decode_codes(codes, shuffle=False)
        torch.manual_seed(0)
        shuffled = model.decode_codes(codes, shuffle=True)
    torch.testing.assert_close(shuffled, fixed, atol=ATOL, rtol=0)


def test_ordered_control_never_shuffles():
    model = _model(seed=6, ordered=True)
    codes = model.quantizer.indices_to_codes(_random_tokens(3, model.cfg))
    with torch.no_grad():
        assert torch.equal(model.decode_codes(codes, shuffle=True), model.decode_codes(codes, shuffle=False))


def test_decode_counts():
    model = _model(seed=7)
    tokens = model.encode(_images(3))
    counts = set_to_counts(tokens, model.cfg.codebook_size)
    with torch.no_grad():
        torch.testing.assert_close(model.decode_counts(counts), model.decode(tokens), atol=ATOL, rtol=0)
        torch.testing.assert_close(model.decode_counts(counts), model.decode(canonical_order(tokens)))


def test_straight_through_gradient_reaches_the_encoder():
    model = _model(seed=8).train()
    recon, _ = model(_images(2))
    torch.nn.functional.mse_loss(recon, _images(2)).backward()  # the pixel loss alone, no quantizer losses
    enc_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert enc_grads and sum(float(g.abs().sum()) for g in enc_grads) > 0
    assert float(model.encoder.patch_embed.weight.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------- bad input

_BAD_IMAGES = {
    "channels": (torch.zeros(2, 1, 16, 16), r"3 channels.*got 1 channels"),
    "not divisible": (torch.zeros(2, 3, 18, 18), r"18x18 is not divisible by patch_size=4"),
    "other size": (torch.zeros(2, 3, 32, 32), r"32x32 does not match image_size=16"),
    "uint8": (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"float tensor.*got dtype torch.uint8"),
    "int64": (torch.zeros(2, 3, 16, 16, dtype=torch.int64), r"got dtype torch.int64"),
    "range 0..255": (torch.full((2, 3, 16, 16), 255.0), r"values in \[-1, 1\], got values in \[255, 255\]"),
    "slightly out": (torch.full((1, 3, 16, 16), -1.01), r"got values in \[-1.01"),
    "nan": (torch.full((1, 3, 16, 16), float("nan")), r"NaN"),
    "3-d": (torch.zeros(3, 16, 16), r"got shape \(3, 16, 16\)"),
    "empty": (torch.zeros(0, 3, 16, 16), r"batch size 0"),
    "numpy": (torch.zeros(1, 3, 16, 16).numpy(), r"got ndarray"),
}


@pytest.mark.parametrize("case", sorted(_BAD_IMAGES))
def test_bad_images(case):
    model = _model()
    x, pattern = _BAD_IMAGES[case]
    for call in (model.encode, model.forward, model.quantize):
        with pytest.raises(ValueError, match=pattern):
            call(x)


def test_rounding_outside_the_range_is_accepted():
    model = _model()
    model.encode(torch.full((1, 3, 16, 16), 1.0 + 1e-6))
    model.encode(torch.full((1, 3, 16, 16), -1.0 - 1e-6))


_BAD_TOKENS = {
    "too large": (torch.full((2, 8), 32), r"values in \[0, 32\), got values in \[32, 32\]"),
    "negative": (torch.full((2, 8), -1), r"got values in \[-1, -1\]"),
    "float": (torch.zeros(2, 8), r"integer tensor.*got dtype torch.float32"),
    "bool": (torch.zeros(2, 8, dtype=torch.bool), r"got dtype torch.bool"),
    "wrong M": (torch.zeros(2, 7, dtype=torch.int64), r"\(B, 8\).*got shape \(2, 7\)"),
    "1-d": (torch.zeros(8, dtype=torch.int64), r"got shape \(8,\)"),
    "empty": (torch.zeros(0, 8, dtype=torch.int64), r"got shape \(0, 8\)"),
    "list": ([[0] * 8], r"got list"),
}


@pytest.mark.parametrize("case", sorted(_BAD_TOKENS))
def test_bad_tokens(case):
    tokens, pattern = _BAD_TOKENS[case]
    with pytest.raises(ValueError, match=pattern):
        _model().decode(tokens)


def test_int32_tokens_are_accepted():
    model = _model()
    tokens = _random_tokens(2, model.cfg)
    with torch.no_grad():
        assert torch.equal(model.decode(tokens.int()), model.decode(tokens))


_BAD_COUNTS = {
    "wrong sum": (torch.zeros(2, 32, dtype=torch.int64), r"row sums \[0\]"),
    "negative": (torch.cat([torch.full((1, 1), -1), torch.full((1, 1), 9), torch.zeros(1, 30)], 1).long(),
                 r"negative"),
    "wrong C": (torch.zeros(1, 16, dtype=torch.int64), r"\(B, 32\).*got shape \(1, 16\)"),
    "float": (torch.zeros(1, 32), r"got dtype torch.float32"),
}


@pytest.mark.parametrize("case", sorted(_BAD_COUNTS))
def test_bad_counts(case):
    counts, pattern = _BAD_COUNTS[case]
    with pytest.raises(ValueError, match=pattern):
        _model().decode_counts(counts)


def test_wrong_config_type():
    with pytest.raises(TypeError, match="TokenizerConfig"):
        SetTokenizer({"width": 32})  # type: ignore[arg-type]
