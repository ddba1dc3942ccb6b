"""Matching arms of the ablation (tokenset.set_decoders; the probe in tokenset.baselines.matching): the assignment,
the losses, the slot generator in the tokenizer, the on_log hook of fit_tokenizer, and the ablation section of the
config."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from tokenset import set_decoders
from tokenset.baselines import matching
from tokenset.config import (ABLATION_ARMS, STUDY_LOG_ROWS, AblationConfig, TokenizerConfig, TrainConfig, from_mapping,
                             load_params)
from tokenset.tokenizer import SetTokenizer
from tokenset.train import fit_tokenizer

from tests.helpers import randomized

ROOT = Path(__file__).resolve().parents[1]
ARMS = list(set_decoders.MATCHING_ARMS)


def _uint8_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def _model(arm: str, seed: int = 0, **overrides) -> SetTokenizer:
    torch.manual_seed(seed)
    return SetTokenizer(TokenizerConfig.preset("tiny", decoder_input=arm, **overrides))


def _confident_logits(codes: list[int], c: int, margin: float = 50.0) -> torch.Tensor:
    """(1, len(codes), c) logits: slot i predicts codes[i] with near-certainty."""
    logits = torch.zeros(1, len(codes), c)
    logits[0, torch.arange(len(codes)), torch.tensor(codes)] = margin
    return logits


# --------------------------------------------------------------------------------------------- the assignment


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_hungarian_equals_brute_force(m):
    g = torch.Generator().manual_seed(m)
    cost = torch.rand(6, m, m, generator=g)
    got = set_decoders.hungarian_assignment(cost)
    for b in range(cost.shape[0]):
        # brute force over all slot orders: perm[j] = slot of target j
        totals = {perm: sum(float(cost[b, perm[j], j]) for j in range(m)) for perm in itertools.permutations(range(m))}
        best = min(totals, key=totals.get)
        assert tuple(got[b].tolist()) == best  # continuous random costs: the optimum is unique
        assert math.isclose(float(cost[b, got[b], torch.arange(m)].sum()), totals[best], rel_tol=1e-6)


def test_hungarian_assignment_is_a_permutation_even_with_ties():
    g = torch.Generator().manual_seed(0)
    cost = torch.randint(0, 3, (5, 7, 7), generator=g).float()  # many ties
    a = set_decoders.hungarian_assignment(cost)
    assert a.shape == (5, 7) and a.dtype == torch.int64
    for row in a:
        assert sorted(row.tolist()) == list(range(7))


def test_hungarian_loss_is_the_mean_cost_of_the_assigned_pairs_and_its_gradient_skips_the_assignment():
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(3, 4, 4, generator=g).requires_grad_(True)
    loss, a = set_decoders.hungarian_loss(cost)
    assert not a.requires_grad and a.dtype == torch.int64
    picked = torch.stack([cost[b, a[b], torch.arange(4)] for b in range(3)])
    assert torch.allclose(loss, picked.mean())
    loss.backward()
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        expected[b, a[b], torch.arange(4)] = 1 / 12  # d mean / d chosen entry; nothing else gets a gradient
    assert torch.allclose(cost.grad, expected)


def test_chamfer_gradient_reaches_only_the_argmin_entries():
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(2, 3, 3, generator=g).requires_grad_(True)
    set_decoders.chamfer_loss(cost).backward()
    expected = torch.zeros(2, 3, 3)
    for b in range(2):
        for j in range(3):
            expected[b, int(cost[b, :, j].argmin()), j] += 1 / 6  # target j -> its cheapest slot
        for i in range(3):
            expected[b, i, int(cost[b, i].argmin())] += 1 / 6  # slot i -> its cheapest target
    assert torch.allclose(cost.grad, expected)


def test_matching_cost_is_the_cross_entropy_of_each_slot_target_pair():
    g = torch.Generator().manual_seed(3)
    logits, targets = torch.randn(2, 3, 5, generator=g), torch.randint(5, (2, 3), generator=g)
    cost = set_decoders.matching_cost(logits, targets)
    assert cost.shape == (2, 3, 3)
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        ce = torch.nn.functional.cross_entropy(logits[b, i:i + 1], targets[b, j:j + 1])
        assert math.isclose(float(cost[b, i, j]), float(ce), rel_tol=1e-5)


# --------------------------------------------------------------------------------------------- Chamfer and repeats


def test_chamfer_ignores_multiplicities_where_hungarian_does_not():
    """Documented property: equal targets may all claim one slot, so Chamfer only sees the distinct codes."""
    c, a, b, cc, d = 8, 1, 2, 3, 4
    # slots cover the distinct codes {a, b, c} (c twice): Chamfer cannot tell (a, a, b, c) from (a, b, c, c)
    logits = _confident_logits([a, b, cc, cc], c)
    with_repeat_a = torch.tensor([[a, a, b, cc]])
    with_repeat_c = torch.tensor([[a, b, cc, cc]])
    ch = [float(set_decoders.matching_loss("chamfer", logits, t)["loss"]) for t in (with_repeat_a, with_repeat_c)]
    hu = [float(set_decoders.matching_loss("hungarian", logits, t)["loss"]) for t in (with_repeat_a, with_repeat_c)]
    assert ch[0] < 1e-6 and ch[1] < 1e-6  # the same (minimal) loss for two different multisets
    assert hu[1] < 1e-6 and hu[0] > 10.0  # Hungarian: one 'a' target must take the 'c' slot
    # several equal targets claim one slot: the Chamfer assignment is not one-to-one
    assignment = set_decoders.chamfer_assignment(set_decoders.matching_cost(_confident_logits([a, b, cc, d], c),
                                                                    with_repeat_a))
    assert assignment.tolist() == [[0, 0, 1, 2]]
    assert len(set(assignment[0].tolist())) < 4
    # the slot -> target half depends on the targets' support only (any random logits)
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(1, 4, c, generator=g)
    halves = [set_decoders.matching_cost(rnd, t).min(dim=2).values for t in (with_repeat_a, with_repeat_c)]
    assert torch.equal(halves[0], halves[1])


def test_canonical_assignment_and_changed_share():
    targets = torch.tensor([[5, 5, 2, 7]])
    a1, a2 = torch.tensor([[3, 1, 0, 2]]), torch.tensor([[1, 3, 0, 2]])  # the two 5s swap their slots
    c1, c2 = matching.canonical_assignment(a1, targets), matching.canonical_assignment(a2, targets)
    assert c1.tolist() == [[1, 3, 0, 2]] and torch.equal(c1, c2)
    assert matching.changed_share(c1, c2) == 0.0
    assert matching.changed_share(a1, a2) == 0.5
    with pytest.raises(ValueError, match="equal shapes"):
        matching.changed_share(a1, a1[:, :3])


@pytest.mark.parametrize("bad, match", [
    (dict(logits=torch.zeros(2, 3)), "logits: expected a float tensor"),
    (dict(targets=torch.zeros(2, 3)), "targets: expected an integer tensor"),
    (dict(targets=torch.full((2, 3), 9)), r"targets: expected values in \[0, 5\)"),
    (dict(targets=torch.zeros(1, 3, dtype=torch.long)), r"targets: expected an integer tensor \(2, N\)"),
])
def test_matching_cost_rejects_bad_input(bad, match):
    args = {"logits": torch.zeros(2, 3, 5), "targets": torch.zeros(2, 3, dtype=torch.long), **bad}
    with pytest.raises(ValueError, match=match):
        set_decoders.matching_cost(args["logits"], args["targets"])


def test_assignment_rejects_bad_cost():
    with pytest.raises(ValueError, match="as many slots as targets"):
        set_decoders.hungarian_assignment(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="finite"):
        set_decoders.hungarian_assignment(torch.tensor([[[0.0, math.inf], [1.0, math.nan]]]))
    with pytest.raises(ValueError, match="kind: expected one of"):
        set_decoders.matching_loss("pooling", torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))


# --------------------------------------------------------------------------------------------- in the tokenizer


@pytest.mark.parametrize("arm", ARMS)
def test_forward_decode_shapes_and_match_loss(arm):
    model = _model(arm, match_weight=0.5).train()
    cfg = model.cfg
    x = _uint8_images(3).float() / 127.5 - 1
    recon, out = model(x)
    assert recon.shape == x.shape
    assert out["match_loss"].ndim == 0 and float(out["match_loss"]) > 0 and not out["match_loss"].requires_grad
    total = out["recon_loss"] + out["quant_loss"] + 0.5 * out["match_loss"]
    assert math.isclose(float(out["loss"].detach()), float(total), rel_tol=1e-5)
    _, logits = model.decoder.latents(model.quantize(x)[0])
    assert logits.shape == (3, cfg.num_tokens, cfg.codebook_size)
    model.eval()
    with torch.no_grad():
        y = model.decode(model.encode(x))
    assert y.shape == x.shape and float(y.min()) >= -1 and float(y.max()) <= 1
    assert "match_loss" not in _model("set").train()(x)[1]


@pytest.mark.parametrize("arm", ARMS)
def test_gradient_reaches_the_slot_generator(arm):
    model = _model(arm).train()
    _, out = model(_uint8_images(4).float() / 127.5 - 1)
    # the matching loss alone (recover it from the total): its gradient must reach every slot-generator weight
    (out["loss"] - out["recon_loss"] - out["quant_loss"]).backward()  # constant offset: same gradient as loss
    for name, p in model.decoder.slots.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    model.zero_grad()
    codes, tokens, _ = model.quantize(_uint8_images(4).float() / 127.5 - 1)
    _, logits = model.decoder.latents(codes)
    loss = set_decoders.matching_loss(arm, logits, tokens)["loss"]
    loss.backward()
    for name in ("summary_proj.weight", "classifier.weight", "slot_positional_embedding"):
        assert float(dict(model.decoder.slots.named_parameters())[name].grad.abs().sum()) > 0, name
    assert float(model.encoder.to_token.weight.grad.abs().sum()) > 0  # through the summary and the codes


@pytest.mark.parametrize("arm", ARMS)
def test_decode_of_matching_arms_is_order_invariant_and_reads_the_tokens(arm):
    model = randomized(_model(arm, seed=1), seed=1).eval()  # at init the tokens barely move the output
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(cfg.codebook_size, (4, cfg.num_tokens), generator=g)
    with torch.no_grad():
        base = model.decode(tokens)
        shuffled = model.decode(tokens.flip(1))
        other = model.decode(torch.randint(cfg.codebook_size, (4, cfg.num_tokens), generator=g))
    assert float((shuffled - base).abs().max()) <= 1e-5
    assert float((other - base).abs().max()) > 1e-3


def test_probe_assignment():
    model = _model("hungarian").train()
    images = _uint8_images(5)
    a = matching.probe_assignment(model, images)
    assert model.training  # mode restored
    assert a.shape == (5, model.cfg.num_tokens) and a.dtype == torch.int64
    for row in a:
        assert sorted(row.tolist()) == list(range(model.cfg.num_tokens))
    assert torch.equal(a, matching.probe_assignment(model, images.float() / 127.5 - 1))  # uint8 or float input
    with pytest.raises(ValueError, match="decoder_input in"):
        matching.probe_assignment(_model("set"), images)


# --------------------------------------------------------------------------------------------- on_log hook


def _read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_on_log_values_land_in_the_log_csv(tmp_path):
    train, val = _uint8_images(32, seed=0), _uint8_images(8, seed=1)
    calls = []

    def hook(step, model):
        calls.append((step, model.training))
        return {"probe_value": step * 1.5}

    cfg = TrainConfig.preset("tiny", steps=4, batch_size=8, log_every=2, ckpt_every=4)
    fit_tokenizer(TokenizerConfig.preset("tiny"), cfg, train, val, tmp_path, progress=False, plot=False,
                  on_log=hook)
    rows = _read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert [float(r["probe_value"]) for r in rows] == [3.0, 6.0]
    assert calls == [(2, False), (4, False)]  # the EMA model, in eval mode


def test_instability_probe_in_a_matching_run_and_checkpoint(tmp_path):
    train, val = _uint8_images(32, seed=0), _uint8_images(8, seed=1)
    probe = matching.InstabilityProbe(val[:4])
    tok = TokenizerConfig.preset("tiny", decoder_input="hungarian")
    cfg = TrainConfig.preset("tiny", steps=6, batch_size=8, lr=3e-3, log_every=2, ckpt_every=6)
    metrics = fit_tokenizer(tok, cfg, train, val, tmp_path, progress=False, plot=False, on_log=probe)
    rows = _read_log(tmp_path / "log.csv")
    shares = [float(r["match_changed"]) for r in rows]
    assert len(shares) == 3 and math.isnan(shares[0])
    assert all(0.0 <= s <= 1.0 for s in shares[1:])
    assert [s for _, s in probe.history][1:] == shares[1:]
    assert all(float(r["match_loss"]) > 0 for r in rows)
    assert math.isfinite(metrics["val_psnr"])
    model = SetTokenizer.from_checkpoint(tmp_path / "checkpoint.pt")
    assert model.cfg.decoder_input == "hungarian"
    assert model.decode(model.encode(val[:2].float() / 127.5 - 1)).shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("change, match", [
    (dict(decoder_input="sinkhorn"), "decoder_input"),
    (dict(match_weight=-1.0), "match_weight"),
    (dict(match_weight=math.nan), "match_weight"),
    (dict(slot_depth=0), "slot_depth"),
    (dict(match_weight="1"), "match_weight"),
])
def test_tokenizer_config_rejects_bad_matching_fields(change, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig.preset("tiny", **change)


def test_new_tokenizer_fields_keep_old_configs_equal():
    cfg = TokenizerConfig.preset("tiny")
    d = cfg.to_dict()
    assert "match_weight" not in d and "slot_depth" not in d  # at their defaults: as configs saved before them
    assert from_mapping(TokenizerConfig, d, where="test") == cfg
    changed = cfg.replace(decoder_input="chamfer", match_weight=0.5, slot_depth=2)
    assert changed.to_dict()["match_weight"] == 0.5 and changed.to_dict()["slot_depth"] == 2
    assert from_mapping(TokenizerConfig, changed.to_dict(), where="test") == changed


@pytest.mark.parametrize("change, match", [
    (dict(arms=[]), "arms"),
    (dict(arms=["set", "set"]), "arms"),
    (dict(arms=["set", "sinkhorn"]), "arms"),
    (dict(steps=0), "steps"),
    (dict(psnr_threshold=0.0), "psnr_threshold"),
    (dict(psnr_threshold=math.inf), "psnr_threshold"),
    (dict(probe_images=0), "probe_images"),
    (dict(unknown_key=1), "unknown key"),
])
def test_ablation_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        AblationConfig.preset("tiny", **change)


def test_ablation_presets_and_smoke_params():
    for name in ("tiny", "small"):
        cfg = AblationConfig.preset(name)
        assert cfg.arms == ABLATION_ARMS and cfg.steps >= 1 and cfg.probe_images >= 1
    smoke = load_params(ROOT / "tests" / "smoke_params.yaml", "ablation")
    assert smoke == AblationConfig.preset("tiny")
    assert isinstance(smoke.arms, tuple) and set(smoke.arms) == set(ABLATION_ARMS)


def test_ablation_section_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"ablation": {"preset": "small", "arms": ["set", "hungarian"], "steps": 7}}))
    cfg = load_params(path, "ablation")
    assert cfg.arms == ("set", "hungarian") and cfg.steps == 7 and cfg.psnr_threshold == AblationConfig.PRESETS["small"]["psnr_threshold"]


def test_ablation_arm_configs_differ_only_in_the_switch():
    tok, train = TokenizerConfig.preset("tiny"), TrainConfig.preset("tiny", disc_steps=5, max_minutes=3.0)
    abl = AblationConfig.preset("tiny")
    cfgs = {arm: AblationConfig.arm_tokenizer(tok, arm) for arm in ABLATION_ARMS}
    assert cfgs["ordered"].ordered and cfgs["ordered"].decoder_input == "set"
    for arm in ("set", "mean", "pma", "hungarian", "chamfer"):
        assert not cfgs[arm].ordered and cfgs[arm].decoder_input == arm
    for cfg in cfgs.values():
        assert cfg.replace(ordered=False, decoder_input="set") == tok
    with pytest.raises(ValueError, match="arm: expected one of"):
        AblationConfig.arm_tokenizer(tok, "sinkhorn")
    small = AblationConfig.preset("small")  # the study model, then the arm's switch
    study = small.tokenizer(TokenizerConfig.preset("small"), "hungarian")
    assert (study.width, study.decoder_width, study.depth, study.num_tokens, study.codebook_size, study.head_channels,
            study.decoder_input) == (64, 64, 2, 32, 512, 16, "hungarian") and len(small.seeds) >= 3
    # at `small` the headline tokenizer is the study model: stage tokenizer's set / ordered runs (the same model,
    # optimisation and seed) are the ablation's, reused by notebook 06
    headline, recipe = TokenizerConfig.preset("small"), TrainConfig.preset("small")
    assert small.tokenizer(headline, "set") == headline.replace(ordered=False)
    assert small.tokenizer(headline, "ordered") == headline.replace(ordered=True)
    assert all(small.arm_train(recipe, s) == recipe.replace(seed=s) for s in small.seeds)
    with pytest.raises(ValueError, match="head_channels"):
        AblationConfig.preset("small", head_channels=-1)
    assert abl.tokenizer(tok, "pma") == cfgs["pma"]  # tiny: no study sizes, the tokenizer section itself
    assert abl.arm_train(train, 5).seed == 5
    shared = abl.arm_train(train)
    assert (shared.steps, shared.disc_steps, shared.max_minutes) == (abl.steps, 0, 0.0)
    assert shared.log_every == min(train.log_every, max(1, abl.steps // STUDY_LOG_ROWS))  # a curve of >= 8 rows
    assert shared.replace(steps=train.steps, disc_steps=5, max_minutes=3.0, log_every=train.log_every,
                          warmup_steps=train.warmup_steps) == train
