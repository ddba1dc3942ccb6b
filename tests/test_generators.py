"""The generator registry, fit_generator, sampling to token rows, caching and checkpoint loading."""

import pytest
import torch

from tokenset import generators
from tokenset.bijection import set_to_counts
from tokenset.config import DenoiserConfig, FSDDConfig, TrainConfig
from tokenset.generators import fit_generator

C, M, K = 16, 6, 2


def toy_tokens(n=24, seed=0):
    """Two classes with disjoint code ranges, so a generator that learns anything separates them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    tokens = torch.randint(0, C // 2, (n, M), generator=g) + labels[:, None] * (C // 2)
    return tokens, labels


CFG = DenoiserConfig.preset("tiny", codebook_size=C, total=M, num_classes=K)
FSDD_CFG = FSDDConfig.preset("tiny")
TRAIN = TrainConfig.preset("tiny", steps=30, batch_size=8, lr=3e-3, log_every=10, ckpt_every=15)


def test_model_input_views():
    tokens = torch.tensor([[3, 1, 3, 0, 2, 1]])
    assert torch.equal(generators.model_input("fsdd", tokens, C), set_to_counts(tokens, C))
    assert generators.model_input("masked_sorted", tokens, C).tolist() == [[0, 1, 1, 2, 3, 3]]
    assert generators.model_input("masked_ordered", tokens, C).tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="unknown generator 'gan'"):
        generators.model_input("gan", tokens, C)


@pytest.mark.parametrize("name", sorted(generators.GENERATORS))
def test_fit_generate_and_reload(tmp_path, name):
    tokens, labels = toy_tokens()
    fit = fit_generator(name, CFG, FSDD_CFG, TRAIN, tokens, labels, tmp_path, progress=False)
    assert fit["steps"] == TRAIN.steps and (tmp_path / "checkpoint.pt").is_file()
    log = (tmp_path / "log.csv").read_text().splitlines()
    losses = [float(r.split(",")[4]) for r in log[1:]]
    assert losses[-1] < losses[0], f"{name}: loss did not decrease: {losses}"
    sampled = generators.generate(name, fit["model"], torch.tensor([0, 1, 1]), FSDD_CFG,
                                  generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (3, M) and sampled.dtype == torch.int64
    assert int(sampled.min()) >= 0 and int(sampled.max()) < C
    loaded_name, model = generators.load_generator(tmp_path / "checkpoint.pt")
    assert loaded_name == name
    for a, b in zip(model.state_dict().values(), fit["model"].state_dict().values()):
        assert torch.equal(a, b)
    again = fit_generator(name, CFG, FSDD_CFG, TRAIN, tokens, labels, tmp_path, progress=False)  # finished: no-op
    assert again["steps"] == TRAIN.steps and again["loss"] == pytest.approx(losses[-1])


def test_fit_generator_bad_inputs(tmp_path):
    tokens, labels = toy_tokens()
    with pytest.raises(ValueError, match=r"tokens: expected \(N, 6\)"):
        fit_generator("fsdd", CFG, FSDD_CFG, TRAIN, tokens[:, :3], labels, tmp_path)
    with pytest.raises(ValueError, match="labels: expected int64"):
        fit_generator("fsdd", CFG, FSDD_CFG, TRAIN, tokens, labels.float(), tmp_path)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 2\)"):
        fit_generator("fsdd", CFG, FSDD_CFG, TRAIN, tokens, labels + 5, tmp_path)
    with pytest.raises(ValueError, match="unknown generator"):
        fit_generator("vae", CFG, FSDD_CFG, TRAIN, tokens, labels, tmp_path)


def test_load_generator_refuses_other_checkpoints(tmp_path):
    from tokenset.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "x.pt", {"config": {"tokenizer": {}}, "ema": {}})
    with pytest.raises(ValueError, match="not a generator checkpoint"):
        generators.load_generator(tmp_path / "x.pt")


def test_fsdd_loss_by_t_shape_and_values():
    tokens, labels = toy_tokens(8)
    model = generators.build_generator("fsdd", CFG)
    counts = set_to_counts(tokens, C)
    table = generators.fsdd_loss_by_t(model, FSDD_CFG, counts, labels, bins=4)
    assert list(table.t) == [0.125, 0.375, 0.625, 0.875]
    # adaLN-Zero: an untrained model predicts uniform logits over 0..M, so the loss is log(M + 1) everywhere
    assert table.loss.tolist() == pytest.approx([torch.log(torch.tensor(M + 1.0)).item()] * 4, rel=1e-5)


def test_encode_cached_with_a_loaded_model(tmp_path, monkeypatch):
    from tokenset.checkpoint import save_checkpoint
    from tokenset.config import TokenizerConfig
    from tokenset.tokenizer import SetTokenizer

    torch.manual_seed(0)
    cfg = TokenizerConfig.preset("tiny")
    model = SetTokenizer(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "tok.pt", {"config": {"tokenizer": cfg.to_dict()}, "ema": model.state_dict()})
    images = torch.randint(0, 256, (5, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    cold = generators.encode_cached(ckpt, images, tmp_path / "a.pt")  # loads the checkpoint itself

    def refuse(*args, **kwargs):
        raise AssertionError("encode_cached loaded the checkpoint although a model was given")

    monkeypatch.setattr(SetTokenizer, "from_checkpoint", refuse)
    given = generators.encode_cached(ckpt, images, tmp_path / "b.pt", model=model)
    assert given.shape == (5, cfg.num_tokens) and torch.equal(given, cold)
    assert torch.equal(generators.encode_cached(ckpt, images, tmp_path / "b.pt", model=None), cold)  # warm cache


def test_class_balanced_labels():
    assert generators.class_balanced_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="at least 1"):
        generators.class_balanced_labels(3, 0)


def test_generate_images_one_per_label_and_seeded(tmp_path):
    from tokenset.config import TokenizerConfig
    from tokenset.tokenizer import SetTokenizer

    tokens, labels = toy_tokens()
    fit = fit_generator("masked_sorted", CFG, FSDD_CFG, TRAIN.replace(steps=2), tokens, labels, tmp_path,
                        progress=False)
    tok = SetTokenizer(TokenizerConfig.preset("tiny", num_tokens=M, codebook_size=C)).eval()
    want = generators.class_balanced_labels(K, 3)
    a = generators.generate_images("masked_sorted", fit["model"], tok, want, FSDD_CFG, seed=1)
    b = generators.generate_images("masked_sorted", fit["model"], tok, want, FSDD_CFG, seed=1)
    assert a.shape == (len(want), 3, tok.cfg.image_size, tok.cfg.image_size) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="labels: expected a non-empty 1-D int64 tensor"):
        generators.generate_images("masked_sorted", fit["model"], tok, want.float(), FSDD_CFG)
