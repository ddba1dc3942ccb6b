"""The tokens / codebook-size sweep section (tokenset.config.SweepConfig, notebook 09): its grid points, validation,
presets and loading from YAML."""

from pathlib import Path

import pytest
import yaml

from tokenset.config import (SECTIONS, STUDY_LOG_ROWS, AblationConfig, SweepConfig, TokenizerConfig, TrainConfig,
                             from_mapping, load_params, study_train)

ROOT = Path(__file__).resolve().parents[1]


def test_cross_grid_is_the_centre_row_and_column_once_each():
    cfg = SweepConfig.preset("small")
    assert cfg.grid == "cross"
    assert cfg.centre_row() == [(32, 256), (32, 512), (32, 1024)]
    assert cfg.centre_column() == [(16, 512), (32, 512), (64, 512)]
    assert cfg.points() == [(16, 512), (32, 256), (32, 512), (32, 1024), (64, 512)]
    assert len(cfg.points()) == len(cfg.num_tokens) + len(cfg.codebook_sizes) - 1  # the centre point is shared


def test_full_grid_is_every_pair_sorted():
    cfg = SweepConfig.preset("small", grid="full", num_tokens=[64, 16, 32], codebook_sizes=[1024, 128],
                             centre_tokens=64, centre_codebook=128)
    assert cfg.points() == [(16, 128), (16, 1024), (32, 128), (32, 1024), (64, 128), (64, 1024)]
    assert set(cfg.centre_row()) | set(cfg.centre_column()) <= set(cfg.points())


def test_cross_grid_with_unsorted_lists_and_corner_centre():
    cfg = SweepConfig.preset("tiny", num_tokens=[8, 2, 4], codebook_sizes=[64, 16], centre_tokens=2,
                             centre_codebook=64)
    assert cfg.centre_row() == [(2, 16), (2, 64)]
    assert cfg.points() == [(2, 16), (2, 64), (4, 64), (8, 64)]


def test_single_value_grid_is_one_point():
    cfg = SweepConfig.preset("tiny", num_tokens=[8], codebook_sizes=[32])
    assert cfg.points() == [(8, 32)]
    assert cfg.replace(grid="full").points() == [(8, 32)]


@pytest.mark.parametrize("change, match", [
    (dict(num_tokens=[]), "key 'num_tokens' is \\(\\); expected a non-empty list"),
    (dict(num_tokens=[4, 8, 8]), "key 'num_tokens'.*distinct positive"),
    (dict(num_tokens=[0, 8]), "key 'num_tokens'.*distinct positive"),
    (dict(codebook_sizes=[]), "key 'codebook_sizes'"),
    (dict(codebook_sizes=[32, -16]), "key 'codebook_sizes'"),
    (dict(centre_tokens=16), "key 'centre_tokens' is 16; expected one of num_tokens \\[4, 8\\]"),
    (dict(centre_codebook=64), "key 'centre_codebook' is 64; expected one of codebook_sizes \\[16, 32\\]"),
    (dict(grid="diagonal"), "key 'grid' is 'diagonal'; expected one of \\['cross', 'full'\\]"),
    (dict(steps=0), "key 'steps' is 0; expected at least 1"),
    (dict(fsdd_steps=-1), "key 'fsdd_steps' is -1; expected a non-negative integer"),
    (dict(num_tokens=[4.0, 8]), "key 'num_tokens'\\[0\\] is 4.0 \\(float\\); expected an integer"),
    (dict(sizes=[1]), "unknown key"),
])
def test_sweep_validation_names_the_key(change, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig.preset("tiny", **change)


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"num_tokens": [8], "codebook_sizes": [32], "centre_tokens": 8,
                                              "grid": "cross", "steps": 3}}))
    with pytest.raises(ValueError, match="section 'sweep': missing required key\\(s\\) \\['centre_codebook'\\]"):
        load_params(path, "sweep")


def test_smoke_params_and_presets():
    assert SECTIONS["sweep"] is SweepConfig
    smoke = load_params(ROOT / "tests" / "smoke_params.yaml", "sweep")
    assert smoke == SweepConfig.preset("tiny")
    assert isinstance(smoke.num_tokens, tuple) and isinstance(smoke.codebook_sizes, tuple)
    small = SweepConfig.preset("small")
    assert (small.num_tokens, small.codebook_sizes, small.centre_tokens, small.centre_codebook, small.grid,
            small.steps) == ((16, 32, 64), (256, 512, 1024), 32, 512, "cross", AblationConfig.preset("small").steps)
    # the centre point of each seed is the ablation's set arm of that seed (same study model, budget and seeds)
    tok_small, abl = TokenizerConfig.preset("small"), AblationConfig.preset("small")
    assert small.point_tokenizer(tok_small, small.centre_tokens, small.centre_codebook) == abl.tokenizer(tok_small,
                                                                                                          "set")
    assert small.seeds == abl.seeds and len(small.seeds) >= 3
    train = TrainConfig.preset("small")
    assert all(small.point_train(train, s) == abl.arm_train(train, s) for s in small.seeds)
    gen = TrainConfig.preset("small", steps=300)
    assert small.fsdd_steps >= 1 and small.fsdd_train(gen) == gen.replace(steps=small.fsdd_steps)
    with pytest.raises(ValueError, match="fsdd_steps is 0"):
        small.replace(fsdd_steps=0).fsdd_train(gen)
    # the smoke points fit the smoke tokenizer: every M and C builds a valid TokenizerConfig
    tok = load_params(ROOT / "tests" / "smoke_params.yaml", "tokenizer")
    for m, c in smoke.points():
        cfg = smoke.point_tokenizer(tok, m, c)
        assert (cfg.num_tokens, cfg.codebook_size) == (m, c)


def test_yaml_overrides_and_to_dict_round_trip(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"preset": "small", "grid": "full", "steps": 7}}))
    cfg = load_params(path, "sweep")
    assert cfg.grid == "full" and cfg.steps == 7 and cfg.num_tokens == (16, 32, 64)
    assert len(cfg.points()) == 9
    d = cfg.to_dict()
    assert d["num_tokens"] == [16, 32, 64] and d["codebook_sizes"] == [256, 512, 1024]
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain values
    assert from_mapping(SweepConfig, d, where="test") == cfg


def test_point_configs_change_only_m_c_and_the_budget():
    tok = TokenizerConfig.preset("tiny")
    train = TrainConfig.preset("tiny", disc_steps=5, max_minutes=3.0)
    sweep = SweepConfig.preset("tiny")
    for m, c in sweep.points():
        cfg = sweep.point_tokenizer(tok, m, c)
        assert (cfg.num_tokens, cfg.codebook_size) == (m, c)
        assert cfg.replace(num_tokens=tok.num_tokens, codebook_size=tok.codebook_size) == tok
    narrow = sweep.replace(width=16, depth=1, heads=2).point_tokenizer(tok, 8, 32)  # the study model's sizes
    assert (narrow.width, narrow.decoder_width, narrow.depth, narrow.decoder_depth, narrow.heads,
            narrow.decoder_heads, narrow.num_tokens, narrow.codebook_size) == (16, 16, 1, 1, 2, 2, 8, 32)
    assert sweep.point_train(train, 7).seed == 7 and sweep.point_train(train).seed == train.seed
    with pytest.raises(ValueError, match="seeds"):
        sweep.replace(seeds=(1, 1))
    with pytest.raises(ValueError, match="width"):
        sweep.replace(width=-1)
    shared = sweep.point_train(train)
    assert (shared.steps, shared.disc_steps, shared.max_minutes) == (sweep.steps, 0, 0.0)
    assert shared.log_every == min(train.log_every, max(1, sweep.steps // STUDY_LOG_ROWS))  # a curve of >= 8 rows
    assert shared.replace(steps=train.steps, disc_steps=5, max_minutes=3.0, log_every=train.log_every,
                          warmup_steps=train.warmup_steps) == train


def test_study_runs_log_at_least_eight_rows():
    small = TrainConfig.preset("small")  # log_every 100
    assert study_train(small, 200).log_every == 25 and study_train(small, 2000).log_every == 100
    assert study_train(small, 5).log_every == 1
    assert study_train(small, 150).warmup_steps == 37 and study_train(small, 2000).warmup_steps == 100
    assert study_train(small.replace(workers=2), 150).workers == 2  # the studies run their jobs as `train` says
    # a bypass of at least STUDY_MIN_BYPASS (150) steps, at most half of a short run, never less than train's own
    assert small.quantizer_warmup == 0.1 and study_train(small, 600).quantizer_warmup == 0.25
    assert study_train(small, 200).quantizer_warmup == 0.5 and study_train(small, 3000).quantizer_warmup == 0.1
    assert study_train(small, small.steps) == small  # at the recipe's own steps: the headline runs are the studies'
    assert study_train(small.replace(quantizer_warmup=0.5), 600).quantizer_warmup == 0.5
    assert study_train(TrainConfig.preset("tiny"), 15).quantizer_warmup == 0.0  # no bypass stays no bypass
