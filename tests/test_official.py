"""tokenset.official: official checkpoint names/shapes -> our modules, with clear reports; exact re-parameterisations.

The official files are not here (and nothing downloads). What the official modules hold is a committed fact:
tests/fixtures/official_keys.json lists the state-dict names and shapes of the official tokenizer, DiT1D-S and
DiT1D-B at the released configurations, produced by the official code itself at a recorded commit
(tests/fixtures/make_official_keys.py). From it:

- at the released sizes, state dicts of those names and shapes (on the meta device: no memory) must map completely
  onto our paper-size modules, and ``official_key_shapes`` must reproduce the fixture exactly;
- the FSDD state dicts of the tiny tests are the fixture's DiT1D-S keys shrunk to the tiny config (blocks beyond its
  depth dropped, every released size replaced by the tiny one);
- the tiny tokenizer states still come from ``official_key_shapes`` (its pixel decoder's levels depend on the patch
  size, so the released keys cannot be shrunk by substitution), which the first point pins to the fixture.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenset import official
from tokenset.checkpoint import CheckpointError
from tokenset.config import DenoiserConfig, TokenizerConfig
from tokenset.denoiser import CountDiT
from tokenset.tokenizer import SetTokenizer

TOK = TokenizerConfig.preset("tiny", pixel_head="vqgan", head_channels=32)
DEN = DenoiserConfig.preset("tiny", codebook_size=16, total=4)
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "official_keys.json").read_text())
RELEASED_CONFIGS = {  # our configs at the released sizes (M = 128 tokens, C = 4096 codes, D = 12)
    "tokenizer": ("tokenizer", TokenizerConfig.preset("paper", num_tokens=128, codebook_size=4096, token_dim=12)),
    "fsdd_S": ("fsdd", DenoiserConfig.preset("S", codebook_size=4096, total=128)),
    "fsdd_B": ("fsdd", DenoiserConfig.preset("B", codebook_size=4096, total=128)),
}


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in shapes.items()}


def _official_state(kind: str, cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout state dict at a tiny config: FSDD from the fixture (``_fixture_fsdd_shapes``), the tokenizer
    from ``official_key_shapes`` (pinned to the fixture at the released sizes: ``test_key_shapes_are_the_official``)."""
    if kind == "fsdd":
        return _random(_fixture_fsdd_shapes(cfg), seed)
    return _random(official.official_key_shapes(kind, cfg), seed)


def _fixture_fsdd_shapes(cfg: DenoiserConfig) -> dict[str, tuple[int, ...]]:
    """The fixture's DiT1D-S keys shrunk to ``cfg``: blocks >= cfg.depth dropped, each released size (read from the
    fixture's own shapes) replaced by cfg's; a size the substitution does not know fails the test."""
    keys = FIXTURE["models"]["fsdd_S"]["keys"]
    _, c, d = keys["pos_embed"]
    hidden = keys["blocks.0.mlp.fc1.weight"][0]
    size = {1: 1, d: cfg.width, 2 * d: 2 * cfg.width, 3 * d: 3 * cfg.width, 6 * d: 6 * cfg.width,
            hidden: int(cfg.width * cfg.mlp_ratio), c: cfg.codebook_size, c + 1: cfg.codebook_size + 1,
            keys["final_layer.linear.weight"][0]: cfg.total + 1,
            keys["y_embedder.embedding_table.weight"][0]: cfg.num_classes + 1,
            keys["t_embedder.mlp.0.weight"][1]: cfg.time_freq_dim}
    assert len(size) == 11, "released sizes collide: the substitution would be ambiguous"
    out = {}
    for name, shape in keys.items():
        if name.startswith("blocks.") and int(name.split(".")[1]) >= cfg.depth:
            continue
        unknown = [n for n in shape if n not in size]
        assert not unknown, f"fixture key {name} {shape}: no tiny size for {unknown}"
        out[name] = tuple(size[n] for n in shape)
    return out


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# --------------------------------------------------------------------------------------------- the official keys


def test_the_fixture_records_its_source():
    source = FIXTURE["source"]
    assert source["repository"] == "github.com/Gengzigang/TokenSet" and len(source["commit"]) == 40
    assert set(FIXTURE["models"]) == set(RELEASED_CONFIGS)
    for model in FIXTURE["models"].values():
        assert model["num_keys"] == len(model["keys"]) > 100


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_key_shapes_are_the_official(name):
    kind, cfg = RELEASED_CONFIGS[name]
    ours = {k: list(v) for k, v in official.official_key_shapes(kind, cfg).items()}
    theirs = FIXTURE["models"][name]["keys"]
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_released_state_dicts_map_completely(name):
    """The released files' names and shapes (meta tensors: no memory) map onto our paper-size modules."""
    kind, cfg = RELEASED_CONFIGS[name]
    state = {k: torch.empty(shape, device="meta") for k, shape in FIXTURE["models"][name]["keys"].items()}
    with torch.device("meta"):
        model = official.adapt_tokenizer(SetTokenizer(cfg)) if kind == "tokenizer" else CountDiT(cfg)
    target = model.state_dict()
    ours, report = official.map_official_state_dict(state, kind, target)
    assert report.ok, str(report)
    assert set(ours) == set(target) and all(ours[k].shape == target[k].shape for k in target)
    split = sum(".in_proj_" in k for k in state)  # each in_proj tensor becomes q and kv
    assert report.mapped == len(state) + split


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_state_maps_completely_and_loads(tmp_path):
    state = _official_state("tokenizer", TOK)
    path = tmp_path / "set_tokenizer_tiny.pth"
    torch.save(state, path)
    model, report = official.load_official_tokenizer(path, cfg=TOK)
    assert report.ok and report.mapped == len(state) + sum(".in_proj_" in k for k in state)  # q and kv per in_proj
    assert not model.training
    sd = model.state_dict()
    assert torch.equal(sd["quantizer.codebook"], state["quantize.embedding.weight"])
    assert torch.equal(sd["encoder.latent_tokens"][0], state["latent_tokens"])
    assert torch.equal(sd["decoder.head.pixel.conv_out.weight"], state["pixel_decoder.conv_out.weight"])
    w = TOK.width
    assert torch.equal(sd["encoder.transformer.blocks.0.attn.kv.weight"],
                      state["encoder.transformer.0.attn.in_proj_weight"][w:])
    x = _images()
    tokens = model.encode(x)
    assert tokens.shape == (2, TOK.num_tokens)
    out = model.decode(tokens)
    assert out.shape == x.shape and torch.isfinite(out).all()
    perm = torch.randperm(TOK.num_tokens)
    assert torch.allclose(model.decode(tokens[:, perm]), out, atol=1e-5)  # still a set tokenizer


def test_patch_embedding_fold_is_exact():
    """Official: conv(x * 0.5 + 0.5) with a stride-p kernel; ours: linear on (p q c) patches of x."""
    state = _official_state("tokenizer", TOK)
    model = official.adapt_tokenizer(SetTokenizer(TOK))
    ours, report = official.map_official_state_dict(state, "tokenizer", model.state_dict())
    x = _images()
    p = TOK.patch_size
    ref = F.conv2d(x * 0.5 + 0.5, state["encoder.patch_embed.weight"], state["encoder.patch_embed.bias"], stride=p)
    ref = ref.flatten(2).transpose(1, 2)  # (B, N, W)
    patches = rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
    got = F.linear(patches, ours["encoder.patch_embed.weight"], ours["encoder.patch_embed.bias"])
    assert torch.allclose(got, ref, atol=1e-5)
    assert any("patch_embed" in n for n in report.notes)


def test_scrambled_projection_matches_the_official_reshape_and_conv():
    b, m, w, d = 2, 8, 32, 8
    x = torch.randn(b, m, w)
    conv_w, conv_b = torch.randn(d, w, 1, 1), torch.randn(d)
    ref = F.conv2d(x.reshape(b, w, m, 1), conv_w, conv_b).reshape(b, d, 1, m)  # the official code's shapes
    ref = rearrange(ref, "b d h m -> b (h m) d")
    proj = official.ScrambledTokenProjection(w, d)
    with torch.no_grad():
        proj.weight.copy_(conv_w.flatten(1))
        proj.bias.copy_(conv_b)
    assert torch.allclose(proj(x), ref, atol=1e-5)
    per_token = F.linear(x, conv_w.flatten(1), conv_b)
    assert not torch.allclose(per_token, ref, atol=1e-3)  # why a plain Linear cannot take these weights


def test_attention_block_matches_an_official_style_block():
    """A ViT block in the official layout (nn.MultiheadAttention, ln_1/ln_2, c_fc/c_proj) equals ours after mapping."""
    state = _official_state("tokenizer", TOK)
    model = official.adapt_tokenizer(SetTokenizer(TOK))
    ours, _ = official.map_official_state_dict(state, "tokenizer", model.state_dict())
    model.load_state_dict(ours)
    w = TOK.width
    ref_block = nn.ModuleDict({
        "ln_1": nn.LayerNorm(w), "attn": nn.MultiheadAttention(w, TOK.heads), "ln_2": nn.LayerNorm(w),
        "mlp": nn.Sequential(OrderedDict([("c_fc", nn.Linear(w, 4 * w)), ("gelu", nn.GELU()),
                                          ("c_proj", nn.Linear(4 * w, w))]))})
    prefix = "encoder.transformer.0."
    ref_block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    x = torch.randn(2, 5, w)
    h = x.transpose(0, 1)  # LND, as the official code runs it
    a = ref_block["ln_1"](h)
    h = h + ref_block["attn"](a, a, a, need_weights=False)[0]
    h = h + ref_block["mlp"](ref_block["ln_2"](h))
    with torch.no_grad():
        got = model.encoder.transformer.blocks[0](x)
    assert torch.allclose(got, h.transpose(0, 1), atol=1e-5)


def test_tokenizer_config_is_read_from_the_file(tmp_path):
    state = {"latent_tokens": torch.zeros(128, 768), "quantize.embedding.weight": torch.zeros(4096, 12)}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(official.OfficialCheckpointError, match=r"missing \(our keys") as err:
        official.load_official_tokenizer(path)  # paper preset inferred (M=128, C=4096), most tensors missing
    assert "encoder.patch_embed.weight" in str(err.value) and "2 tensors mapped" in str(err.value)


# --------------------------------------------------------------------------------------------- FSDD


def test_fsdd_state_maps_and_loads_from_a_training_checkpoint(tmp_path):
    ema = _official_state("fsdd", DEN)
    path = tmp_path / "fsdd_tiny.pth"
    args = argparse.Namespace(model="DiT1D-S", token_len=4)  # the official files store their argparse args
    torch.save({"model": _official_state("fsdd", DEN, seed=5), "ema": ema, "args": args}, path)
    model, report = official.load_official_fsdd(path, DEN)
    assert report.ok, str(report)
    assert any("count embedding" in n for n in report.notes) and model.t_embed.scale == 1.0
    sd = model.state_dict()
    assert torch.equal(sd["count_embed.weight"], ema["x_embedder.embedding_table.weight"][: DEN.total + 1])
    assert torch.equal(sd["blocks.0.mlp.2.weight"], ema["blocks.0.mlp.fc2.weight"])
    z = torch.tensor([[4] + [0] * 15, [1] * 4 + [0] * 12])
    logits = model(z, torch.tensor([0.0, 0.5]), torch.tensor([1, 2]))
    assert logits.shape == (2, 16, 5) and torch.isfinite(logits).all()
    raw, _ = official.load_official_fsdd(path, DEN, ema=False)
    assert not torch.equal(raw.state_dict()["pos_embed"], sd["pos_embed"])


def test_fsdd_wrong_shape_and_missing_key_are_reported(tmp_path):
    state = _official_state("fsdd", DEN)
    state["blocks.0.attn.qkv.weight"] = torch.zeros(7, DEN.width)
    del state["final_layer.linear.bias"]
    state["extra.weight"] = torch.zeros(3)
    target = CountDiT(DEN).state_dict()
    before = {k: v.clone() for k, v in target.items()}
    ours, report = official.map_official_state_dict(state, "fsdd", target)
    assert not report.ok
    assert report.mismatched == [f"blocks.0.attn.qkv.weight (7, {DEN.width}) -> blocks.0.attn.qkv.weight: "
                                 f"expected ({3 * DEN.width}, {DEN.width}), got (7, {DEN.width}) after mapping"]
    assert sorted(report.missing) == [f"blocks.0.attn.qkv.weight ({3 * DEN.width}, {DEN.width})",
                                      "final.linear.bias (5,)"]
    assert report.unexpected == ["extra.weight (3,)"]
    assert all(torch.equal(before[k], target[k]) for k in target)  # pure: the target is untouched
    path = tmp_path / "bad.pth"
    torch.save({"ema": state}, path)
    with pytest.raises(official.OfficialCheckpointError, match=r"shape mismatches: 1[\s\S]*qkv[\s\S]*extra\.weight"):
        official.load_official_fsdd(path, DEN)
    model, rep = official.load_official_fsdd(path, DEN, strict=False)
    assert not rep.ok and torch.equal(model.state_dict()["blocks.0.mlp.0.weight"], state["blocks.0.mlp.fc1.weight"])


def test_a_preset_mismatch_is_reported_not_guessed(tmp_path):
    path = tmp_path / "fsdd_b_as_s.pth"
    torch.save({"ema": _official_state("fsdd", DEN.replace(width=64))}, path)
    with pytest.raises(official.OfficialCheckpointError, match="expected") as err:
        official.load_official_fsdd(path, DEN)
    assert "pos_embed (1, 16, 64) -> pos_embed: expected (1, 16, 32)" in str(err.value)


def test_count_table_smaller_than_m_plus_one_is_refused():
    state = _official_state("fsdd", DEN)
    state["x_embedder.embedding_table.weight"] = torch.zeros(3, DEN.width)
    _, report = official.map_official_state_dict(state, "fsdd", CountDiT(DEN).state_dict())
    assert any("at least M + 1 = 5 rows" in m for m in report.mismatched)


def test_files_missing_corrupt_or_unsafe(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        official.load_official_fsdd(tmp_path / "nope.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        official.load_official_tokenizer(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"ema": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        official.load_official_fsdd(evil)
    with pytest.raises(ValueError, match="kind: expected"):
        official.map_official_state_dict({}, "vae", {})
    with pytest.raises(ValueError, match="size: expected"):
        official.load_official_fsdd(evil, size="L")
