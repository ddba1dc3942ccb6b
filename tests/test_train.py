"""The training loop: schedule, data order, determinism, resume after interruption, budget, stage 2, outputs."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from tokenset import train as train_mod
from tokenset.checkpoint import load_checkpoint
from tokenset.config import TokenizerConfig, TrainConfig
from tokenset.tokenizer import SetTokenizer
from tokenset.images import psnr, to_uint8
from tokenset.train import StepSampler, Trainer, WarmupCosine, fit_tokenizer, image_batches

TOK = TokenizerConfig.preset("tiny")


def _uint8_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


TRAIN, VAL = _uint8_images(48, seed=0), _uint8_images(12, seed=1)


def _train_cfg(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, log_every=3, ckpt_every=3)
    return TrainConfig.preset("tiny", **{**base, **kw})


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- pieces


def test_warmup_cosine():
    s = WarmupCosine(warmup=4, total=14)
    assert [s.factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.factor(4) == 1.0
    assert math.isclose(s.factor(9), 0.5, abs_tol=1e-12)
    assert s.factor(14) == 0.0 and s.factor(100) == 0.0
    assert math.isclose(s.factor(4, time_fraction=0.5), 0.5, abs_tol=1e-12)  # time budget half spent


def test_step_sampler_resumes_the_same_batches_and_shards():
    full = StepSampler(20, 3, seed=5, start=0, rank=0, world=1)
    it = iter(full)
    batches = [next(it) for _ in range(14)]  # crosses epoch boundaries (6 batches per epoch)
    it2 = iter(StepSampler(20, 3, seed=5, start=8, rank=0, world=1))
    assert [next(it2) for _ in range(6)] == batches[8:14]
    assert sorted(sum(batches[:6], [])) != list(range(18))[:0]  # full batches of distinct indices
    assert len(set(sum(batches[:6], []))) == 18
    a = next(iter(StepSampler(20, 3, seed=5, start=0, rank=0, world=2)))
    b = next(iter(StepSampler(20, 3, seed=5, start=0, rank=1, world=2)))
    assert not set(a) & set(b)


def test_image_batches_flip_and_scale_deterministically():
    make = image_batches(TRAIN, 8, seed=0, flip=True)
    x = next(make(3))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x, next(make(3)))
    assert not torch.equal(x, next(make(4)))


def test_trainer_is_reusable_for_any_model_and_loss(tmp_path):
    """The generator loop will be this: a model, a loss_fn(model, batch) -> dict, a batch source."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def batches(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(step)
            x = torch.randn(32, 4, generator=g)
            yield x, x @ w.t()
            step += 1

    def loss_fn(m, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(m(x), y)}

    cfg = TrainConfig.preset("tiny", steps=120, lr=0.1, warmup_steps=5, log_every=40, ckpt_every=1000,
                             ema_decay=0.9, weight_decay=0.0)
    last = Trainer(model, cfg, tmp_path, loss_fn=loss_fn, config={"toy": 1}, progress=False).fit(batches)
    assert last["step"] == 120 and last["loss"] < 1e-2
    assert torch.allclose(model.weight, w, atol=0.05)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 120


# --------------------------------------------------------------------------------------------- fit_tokenizer


def test_fit_tokenizer_outputs(tmp_path):
    metrics = fit_tokenizer(TOK, _train_cfg(), TRAIN, VAL, tmp_path, progress=False)
    for key in ("val_psnr", "val_psnr_raw", "val_usage", "val_entropy", "steps", "wall_time_s", "config"):
        assert key in metrics
    assert metrics["steps"] == 8 and not metrics["stopped_by_budget"]
    assert 5 < metrics["val_psnr"] < 60 and 0 < metrics["val_usage"] <= 1
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert {"model", "ema", "optimizer", "scheduler", "step", "rng", "config"} <= set(state)
    assert state["step"] == 8 and state["config"]["tokenizer"] == TOK.to_dict()
    with (tmp_path / "log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [3, 6, 8]
    # the checkpoint rebuilds the tokenizer (EMA weights) and it reproduces the reported PSNR: the one PSNR, on the
    # reconstruction quantised to uint8 (as the tables report it)
    model = SetTokenizer.from_checkpoint(tmp_path / "checkpoint.pt")
    x = VAL.float() / 127.5 - 1
    with torch.no_grad():
        assert math.isclose(float(psnr(to_uint8(model.decode(model.encode(x))), VAL)), metrics["val_psnr"],
                            rel_tol=1e-6)
    # a finished run is not trained again
    again = fit_tokenizer(TOK, _train_cfg(), TRAIN, VAL, tmp_path, progress=False, plot=False)
    assert again["steps"] == 8 and again["val_psnr"] == metrics["val_psnr"]


def test_deterministic_for_a_fixed_seed(tmp_path):
    a = fit_tokenizer(TOK, _train_cfg(), TRAIN, VAL, tmp_path / "a", progress=False, plot=False)
    b = fit_tokenizer(TOK, _train_cfg(), TRAIN, VAL, tmp_path / "b", progress=False, plot=False)
    assert a["val_psnr"] == b["val_psnr"]
    sa, sb = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in "ab")
    assert _states_equal(sa["model"], sb["model"]) and _states_equal(sa["ema"], sb["ema"])
    c = fit_tokenizer(TOK, _train_cfg(seed=1), TRAIN, VAL, tmp_path / "c", progress=False, plot=False)
    assert not _states_equal(sa["model"], load_checkpoint(tmp_path / "c" / "checkpoint.pt")["model"])
    assert c["steps"] == 8


def test_a_finished_identical_run_is_reused_not_retrained(tmp_path, monkeypatch):
    cfg = _train_cfg()
    a = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "a", progress=False, plot=False)
    # a different tokenizer, a different budget or a missing run: nothing is reused
    assert not train_mod.reuse_tokenizer_run(tmp_path / "a", tmp_path / "x", TOK.replace(codebook_size=16), cfg)
    assert not train_mod.reuse_tokenizer_run(tmp_path / "a", tmp_path / "x", TOK, _train_cfg(steps=9))
    assert not train_mod.reuse_tokenizer_run(tmp_path / "missing", tmp_path / "x", TOK, cfg)
    assert not (tmp_path / "x").exists()
    assert train_mod.reuse_tokenizer_run(tmp_path / "a", tmp_path / "b", TOK, cfg)
    copied = (tmp_path / "b" / "checkpoint.pt").stat().st_mtime_ns
    assert train_mod.reuse_tokenizer_run(tmp_path / "a", tmp_path / "b", TOK, cfg)  # b holds it already (a rerun)
    assert (tmp_path / "b" / "checkpoint.pt").stat().st_mtime_ns == copied  # and is left as it is
    fit_tokenizer(TOK, _train_cfg(steps=2), TRAIN, VAL, tmp_path / "y", progress=False, plot=False)
    assert train_mod.reuse_tokenizer_run(tmp_path / "a", tmp_path / "y", TOK, cfg)  # another run there is replaced
    assert load_checkpoint(tmp_path / "y" / "checkpoint.pt")["step"] == 8
    monkeypatch.setattr(train_mod.Trainer, "train_step", lambda *a, **k: pytest.fail("a reused run must not train"))
    b = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "b", progress=False, plot=False)
    assert b["val_psnr"] == a["val_psnr"] and b["steps"] == a["steps"] == 8
    assert (tmp_path / "b" / "log.csv").read_text() == (tmp_path / "a" / "log.csv").read_text()


def test_quantizer_warmup_feeds_the_decoder_latents_then_codes(tmp_path, monkeypatch):
    seen = []
    original = SetTokenizer._shuffled

    def spy(self, codes, shuffle):
        if self.training:
            book = self.quantizer.normalized_codebook()
            nearest = (codes.reshape(-1, codes.shape[-1]) @ book.t()).max(dim=-1).values
            seen.append(bool(torch.allclose(nearest, torch.ones_like(nearest), atol=1e-5)))  # every row is a code
        return original(self, codes, shuffle)

    monkeypatch.setattr(SetTokenizer, "_shuffled", spy)
    out = fit_tokenizer(TOK, _train_cfg(quantizer_warmup=0.5), TRAIN, VAL, tmp_path / "w", progress=False,
                        plot=False)
    assert seen == [False] * 4 + [True] * 4  # 8 steps, warm-up 0.5: the first 4 decode unquantised latents
    assert out["steps"] == 8 and math.isfinite(out["val_psnr"])
    assert load_checkpoint(tmp_path / "w" / "checkpoint.pt")["config"]["train"]["quantizer_warmup"] == 0.5
    assert "quantizer_warmup" not in _train_cfg().to_dict()  # configs saved before the option still match
    with pytest.raises(ValueError, match="quantizer_warmup"):
        _train_cfg(quantizer_warmup=1.0)


class _Killed(Exception):
    pass


def _dying_loss(after: int):
    calls = {"n": 0}
    real = train_mod._tokenizer_loss

    def loss(model, images, **kw):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Killed(f"killed at call {calls['n']}")
        return real(model, images, **kw)

    return loss


@pytest.mark.parametrize("disc_steps", [0, 4])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch, disc_steps):
    cfg = _train_cfg(steps=8, ckpt_every=3, disc_steps=disc_steps)
    full = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "full", progress=False, plot=False)
    monkeypatch.setattr(train_mod, "_tokenizer_loss", _dying_loss(after=7))  # dies during step 8
    with pytest.raises(_Killed):
        fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert saved["step"] == 6  # the last checkpoint before the kill
    starts = []
    real_batches = train_mod.image_batches

    def spy(*args, **kw):
        make = real_batches(*args, **kw)
        return lambda start: (starts.append(start), make(start))[1]

    monkeypatch.setattr(train_mod, "image_batches", spy)
    resumed = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    assert starts[0] == 6  # continues at the saved step
    assert resumed["steps"] == full["steps"] == 8 + disc_steps
    assert resumed["val_psnr"] == full["val_psnr"]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    assert _states_equal(a["model"], b["model"]) and _states_equal(a["ema"], b["ema"])
    with (tmp_path / "cut" / "log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(set(steps))  # no duplicated rows from the redone steps


def test_resume_in_stage_two(tmp_path, monkeypatch):
    cfg = _train_cfg(steps=6, ckpt_every=3, disc_steps=6)
    full = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "full", progress=False, plot=False)
    calls = {"n": 0}
    real_step = train_mod._DecoderGanTrainer.train_step

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] > 4:
            raise _Killed("killed in stage 2")
        return real_step(self, batch)

    monkeypatch.setattr(train_mod._DecoderGanTrainer, "train_step", dying_step)
    with pytest.raises(_Killed):
        fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert saved["stage"] == 2 and saved["step"] == 9 and "disc" in saved
    resumed = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    assert resumed["steps"] == 12 and resumed["val_psnr"] == full["val_psnr"]


def test_stage_two_trains_only_the_decoder(tmp_path):
    for name, disc_steps in (("s1", 0), ("s2", 4)):
        fit_tokenizer(TOK, _train_cfg(steps=6, disc_steps=disc_steps), TRAIN, VAL, tmp_path / name, progress=False,
                      plot=False)
    s1, s2 = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("s1", "s2"))
    frozen = [k for k in s1["ema"] if k.startswith(("encoder.", "quantizer.codebook"))]
    assert frozen and all(torch.equal(s1["ema"][k], s2["model"][k]) for k in frozen)
    assert all(torch.equal(s2["ema"][k], s2["model"][k]) for k in frozen)
    dec = [k for k in s1["ema"] if k.startswith("decoder.")]
    assert any(not torch.equal(s1["ema"][k], s2["model"][k]) for k in dec)
    assert s2["stage"] == 2 and s2["step"] == 10


def test_stage_two_without_discriminator_is_an_l2_decoder_fine_tune(tmp_path):
    """disc_weight 0 (the small preset's measured default): the discriminator never runs or changes."""
    metrics = fit_tokenizer(TOK, _train_cfg(steps=6, disc_steps=4, disc_weight=0.0), TRAIN, VAL, tmp_path,
                            progress=False, plot=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    fresh = train_mod.PatchDiscriminator(TOK.channels_in).state_dict()
    assert state["stage"] == 2 and metrics["steps"] == 10
    assert state["disc_optimizer"]["state"] == {}  # the discriminator's optimizer never stepped
    assert state["disc"].keys() == fresh.keys()
    log = (tmp_path / "log.csv").read_text().splitlines()
    header, stage2 = log[0].split(","), [r.split(",") for r in log[1:] if r.split(",")[1] == "2"]
    assert stage2 and all(row[header.index("g_loss")] == "" for row in stage2 if "g_loss" in header)


def test_time_budget_stops_and_checkpoints(tmp_path):
    cfg = _train_cfg(steps=10_000, max_minutes=0.02, log_every=1000, ckpt_every=1000)
    metrics = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path, progress=False, plot=False)
    assert metrics["stopped_by_budget"] and 0 < metrics["steps"] < 10_000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == metrics["steps"]
    assert metrics["wall_time_s"] < 0.02 * 60 + 5


def test_resume_with_another_config_starts_over_and_says_why(tmp_path, capsys):
    fit_tokenizer(TOK, _train_cfg(steps=4), TRAIN, VAL, tmp_path, progress=False, plot=False)
    capsys.readouterr()
    other = fit_tokenizer(TOK.replace(codebook_size=16), _train_cfg(steps=4), TRAIN, VAL, tmp_path, progress=False,
                          plot=False)
    said = capsys.readouterr().out
    assert "written with another configuration (tokenizer.codebook_size: 32 in the checkpoint, 16 now)" in said
    assert "not resumed: stage 1 trains from step 0" in said
    assert other["steps"] == 4 and load_checkpoint(tmp_path / "checkpoint.pt")["config"]["tokenizer"][
        "codebook_size"] == 16
    # a finished run of more steps than now asked is not reused either: the budget is part of the configuration
    fewer = fit_tokenizer(TOK.replace(codebook_size=16), _train_cfg(steps=2), TRAIN, VAL, tmp_path, progress=False,
                          plot=False)
    assert "train.steps: 4 in the checkpoint, 2 now" in capsys.readouterr().out and fewer["steps"] == 2
    assert _log_steps(tmp_path / "log.csv") == [2]  # the other run's rows are gone


def test_resume_with_other_images_starts_over(tmp_path, capsys):
    cfg = _train_cfg(steps=2)
    fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path, progress=False, plot=False)
    capsys.readouterr()
    fit_tokenizer(TOK, cfg, TRAIN.flip(-1), VAL, tmp_path, progress=False, plot=False)
    said = capsys.readouterr().out
    assert "another configuration (inputs.train_images: 'sha256:" in said and "val_images" not in said


def test_a_finished_run_is_reused_with_its_metrics(tmp_path, capsys, monkeypatch):
    cfg = _train_cfg(steps=6, log_every=3)
    full = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path, progress=False, plot=False)
    capsys.readouterr()
    monkeypatch.setattr(train_mod.Trainer, "train_step", lambda *a, **k: pytest.fail("a finished run must not train"))
    again = fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path, progress=False, plot=False)
    assert "stage 1 already finished (step 6 of 6, same configuration): reused" in capsys.readouterr().out
    drop = ("wall_time_s",)
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    assert again["train_usage"] is not None  # the last log row's, as in the run that trained


def test_resume_between_log_rows_logs_the_same_rows(tmp_path, monkeypatch, capsys):
    """A checkpoint between two log rows (ckpt_every 3, log_every 4) carries the partial interval's sums."""
    cfg = _train_cfg(steps=8, ckpt_every=3, log_every=4)
    fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "full", progress=False, plot=False)
    monkeypatch.setattr(train_mod, "_tokenizer_loss", _dying_loss(after=7))  # dies during step 8
    with pytest.raises(_Killed):
        fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["log_count"] == 2  # steps 5 and 6
    fit_tokenizer(TOK, cfg, TRAIN, VAL, tmp_path / "cut", progress=False, plot=False)
    assert "resuming stage 1 at step 6 of 8 (same configuration)" in capsys.readouterr().out
    timing = ("elapsed_s", "eval_s")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader((tmp_path / d / "log.csv").open())]
            for d in ("full", "cut")]
    assert [r["step"] for r in rows[0]] == ["4", "8"] and rows[0] == rows[1]


def _log_steps(path) -> list[int]:
    with path.open(newline="") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("case", ["float", "size", "channels", "list", "empty"])
def test_fit_tokenizer_bad_input(tmp_path, case):
    bad = {"float": TRAIN.float(), "size": _uint8_images(8, size=32), "channels": TRAIN[:, :1],
           "list": TRAIN.tolist(), "empty": TRAIN[:0]}[case]
    with pytest.raises(ValueError, match="train_images"):
        fit_tokenizer(TOK, _train_cfg(), bad, VAL, tmp_path, progress=False, plot=False)


def test_fewer_images_than_a_batch(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit_tokenizer(TOK, _train_cfg(batch_size=64), TRAIN, VAL, tmp_path, progress=False, plot=False)


# --------------------------------------------------------------------------------------------- distributed


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different initial weights and RNG streams: DDP must make them agree
    model = SetTokenizer(TOK.replace(dead_code_every=2))  # dead-code restarts happen too
    cfg = _train_cfg(steps=4, ckpt_every=100, log_every=100)
    Trainer(model, cfg, out, loss_fn=train_mod._tokenizer_loss, config={}, progress=False).fit(
        image_batches(TRAIN, 8, seed=0, flip=True))
    for p in model.parameters():
        p.requires_grad_(p in set(model.decoder.parameters()))
    train_mod._DecoderGanTrainer(model, cfg, out, config={}, total_steps=2, first_step=4, stage=2, name="stage2",
                                 progress=False).fit(image_batches(TRAIN, 8, seed=0, flip=True))
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_hold_identical_weights(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert _states_equal(a, b)  # parameters and buffers (DDP broadcasts rank 0's buffers at each forward)
    assert int(a["quantizer.calls"]) == 4  # stage 2 does not touch the quantizer (no restarts, no counts)
    start = SetTokenizer(TOK)
    assert not torch.equal(a["decoder.token_embed.weight"], start.state_dict()["decoder.token_embed.weight"])


def test_a_generator_on_other_tokens_starts_over(tmp_path, capsys):
    """A changed tokenizer gives other tokens with the same configs: the generator's checkpoint is not reused."""
    from tokenset.config import DenoiserConfig, FSDDConfig
    from tokenset.generators import fit_generator

    den = DenoiserConfig.preset("tiny", codebook_size=8, total=4, num_classes=2)
    cfg = TrainConfig.preset("tiny", steps=2, batch_size=8)
    tokens = torch.randint(0, 8, (16, 4), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 2
    args = ("fsdd", den, FSDDConfig.preset("tiny"), cfg)
    fit_generator(*args, tokens, labels, tmp_path, progress=False)
    fit_generator(*args, tokens, labels, tmp_path, progress=False)
    assert "already finished (step 2 of 2, same configuration): reused" in capsys.readouterr().out
    fit = fit_generator(*args, (tokens + 1) % 8, labels, tmp_path, progress=False)
    assert "another configuration (inputs.tokens: 'sha256:" in capsys.readouterr().out and fit["steps"] == 2
