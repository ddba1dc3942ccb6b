"""A catalogue of bad inputs across the public API, the params files and the CLI (issue #7).

Each case is (id, call, expected exception type, regex the message must match). The regex names what was wrong
and, where there is one, what was expected. Every case runs against the same tiny models and files, and afterwards
the models' weights and every file the case was given are checked to be unchanged: a rejected call touches nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tokenset import data, metrics
from tokenset import train as train_mod
from tokenset.bijection import counts_to_set, set_to_counts
from tokenset.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tokenset.config import DataConfig, DenoiserConfig, TokenizerConfig, TrainConfig, load_params
from tokenset.denoiser import CountDiT
from tokenset.fsdd import FSDD
from tokenset.tokenizer import SetTokenizer

TOK_CFG = TokenizerConfig.preset("tiny")  # 16 px, M = 8, C = 32
DEN_CFG = DenoiserConfig.preset("tiny", codebook_size=32, total=8)  # 10 classes
M, C = TOK_CFG.num_tokens, TOK_CFG.codebook_size


@dataclasses.dataclass
class Ctx:
    """What the cases act on; ``files`` lists paths whose bytes must survive a rejected call."""

    tmp: Path
    tok: SetTokenizer
    dit: CountDiT
    fsdd: FSDD
    ckpt: Path  # a valid tokenizer checkpoint (tiny)
    other_ckpt: Path  # a checkpoint of another preset: config says tiny, weights are of codebook_size 16
    corrupt: Path  # a truncated copy of ckpt
    params: Path  # a valid params file
    files: list[Path] = dataclasses.field(default_factory=list)

    def write_params(self, text: str, name: str = "bad.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        self.files.append(path)
        return path


VALID_PARAMS = """
data: {name: imagefolder, root: ROOT, image_size: 16, val_fraction: 0.25, seed: 0}
tokenizer: {preset: tiny}
train: {preset: tiny, steps: 2, batch_size: 4}
"""


@pytest.fixture
def ctx(tmp_path) -> Ctx:
    torch.manual_seed(0)
    tok = SetTokenizer(TOK_CFG).eval()
    dit = CountDiT(DEN_CFG).eval()
    config = {"tokenizer": TOK_CFG.to_dict(), "train": TrainConfig.preset("tiny").to_dict()}
    ckpt = save_checkpoint(tmp_path / "tok.pt", {"model": tok.state_dict(), "ema": tok.state_dict(), "config": config,
                                                  "step": 3})
    small = SetTokenizer(TOK_CFG.replace(codebook_size=16))
    other = save_checkpoint(tmp_path / "other.pt", {"model": small.state_dict(), "ema": small.state_dict(),
                                                     "config": config, "step": 3})
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    c = Ctx(tmp_path, tok, dit, FSDD(C, M, num_classes=10), ckpt, other, corrupt, tmp_path / "params.yaml")
    c.params.write_text(VALID_PARAMS.replace("ROOT", str(tmp_path / "images")))
    c.files += [ckpt, other, corrupt, c.params]
    return c


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16) * 2 - 1


def _counts(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _one_hot_counts(batch: int = 2) -> torch.Tensor:
    x = torch.zeros(batch, C, dtype=torch.int64)
    x[:, 0] = M
    return x


def _image_folder(ctx: Ctx, *, truncated: bool = False, empty: bool = False) -> DataConfig:
    root = ctx.tmp / "images"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        if empty:
            (root / "train" / cls / "notes.txt").write_text("not an image")
            continue
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "train" / cls / f"{i}.png")
    if truncated:
        good = (root / "train" / "a" / "0.png").read_bytes()
        (root / "train" / "a" / "cut.png").write_bytes(good[: len(good) // 3])
    return DataConfig(name="imagefolder", root=str(root), image_size=16, val_fraction=0.25, seed=0)


def _bad_model(z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.zeros(z.shape[0], C, M)  # one class short: (B, C, M) instead of (B, C, M + 1)


Case = tuple[str, Callable[[Ctx], Any], type[BaseException], str]

CASES: list[Case] = [
    # ------------------------------------------------------------------ tokenizer
    ("encode-uint8", lambda c: c.tok.encode((torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)),
     ValueError, r"images: expected a float tensor .*got dtype torch.uint8"),
    ("encode-0-255-range", lambda c: c.tok.encode(torch.rand(2, 3, 16, 16) * 255),
     ValueError, r"images: expected values in \[-1, 1\], got values in \[.*\]"),
    ("encode-channels", lambda c: c.tok.encode(torch.zeros(2, 1, 16, 16)),
     ValueError, r"images: expected 3 channels .*got 1 channels"),
    ("encode-size", lambda c: c.tok.encode(torch.zeros(2, 3, 32, 32)),
     ValueError, r"images: size 32x32 does not match image_size=16"),
    ("encode-3d", lambda c: c.tok.encode(torch.zeros(3, 16, 16)),
     ValueError, r"images: expected shape \(B, 3, 16, 16\).*got shape \(3, 16, 16\)"),
    ("encode-empty-batch", lambda c: c.tok.encode(torch.zeros(0, 3, 16, 16)),
     ValueError, r"images: expected a non-empty batch .*got batch size 0"),
    ("encode-nan", lambda c: c.tok.encode(torch.full((1, 3, 16, 16), float("nan"))),
     ValueError, r"images: expected finite values"),
    ("encode-meta-device", lambda c: c.tok.encode(torch.zeros(2, 3, 16, 16, device="meta")),
     ValueError, r"images: on device meta, but the tokenizer's weights are on cpu"),
    ("decode-out-of-range", lambda c: c.tok.decode(torch.full((2, M), C)),
     ValueError, r"tokens: expected values in \[0, 32\), got values in \[32, 32\]"),
    ("decode-float-tokens", lambda c: c.tok.decode(torch.zeros(2, M)),
     ValueError, r"tokens: expected an integer tensor .*got dtype torch.float32"),
    ("decode-wrong-m", lambda c: c.tok.decode(torch.zeros(2, M + 1, dtype=torch.int64)),
     ValueError, r"tokens: expected shape \(B, 8\).*got shape \(2, 9\)"),
    ("decode-meta-device", lambda c: c.tok.decode(torch.zeros(2, M, dtype=torch.int64, device="meta")),
     ValueError, r"tokens: on device meta, but the tokenizer's weights are on cpu"),
    ("decode-counts-bad-sum", lambda c: c.tok.decode_counts(_one_hot_counts() * 7 // 8),
     ValueError, r"counts: expected .*each row summing to M=8, got row sums \[7\]"),
    # ------------------------------------------------------------------ bijection
    ("set-to-counts-out-of-range", lambda c: set_to_counts(torch.tensor([[0, 40]]), C),
     ValueError, r"tokens must lie in \[0, 32\) \(codebook_size\), found the value 40"),
    ("counts-to-set-negative", lambda c: counts_to_set(_counts([[3, -1, 2]])),
     ValueError, r"counts must be non-negative; row 0, code 1 is -1"),
    ("counts-to-set-unequal-sums", lambda c: counts_to_set(_counts([[1, 1], [2, 1]])),
     ValueError, r"every row of counts must have the same sum M; found sums \[2, 3\]"),
    # ------------------------------------------------------------------ CountDiT and FSDD
    ("dit-count-above-m", lambda c: c.dit(torch.full((1, C), M + 1), torch.zeros(1), torch.zeros(1, dtype=torch.long)),
     ValueError, r"z: expected values in \[0, 8\], got values in \[9, 9\]"),
    ("dit-t-out-of-range", lambda c: c.dit(_one_hot_counts(1), torch.tensor([1.5]), torch.zeros(1, dtype=torch.long)),
     ValueError, r"t: expected values in \[0, 1\], got values in \[1.5, 1.5\]"),
    ("dit-label-too-large", lambda c: c.dit(_one_hot_counts(1), torch.zeros(1), torch.tensor([11])),
     ValueError, r"labels: expected values in \[0, 10\], got values in \[11, 11\]"),
    ("fsdd-loss-bad-row-sum", lambda c: c.fsdd.training_loss(c.dit, _one_hot_counts() * 2, torch.zeros(2).long()),
     ValueError, r"counts rows must sum to M = 8; row 0 sums to 16"),
    ("fsdd-q-sample-bad-t", lambda c: c.fsdd.q_sample(_one_hot_counts(), _one_hot_counts(), torch.tensor([0.5, 2.0])),
     ValueError, r"t must lie in \[0, 1\], got values in \[0.5, 2.0\]"),
    ("fsdd-sample-no-labels", lambda c: c.fsdd.sample(c.dit, torch.zeros(0, dtype=torch.long), steps=2),
     ValueError, r"labels must hold at least one label"),
    ("fsdd-sample-label-range", lambda c: c.fsdd.sample(c.dit, torch.tensor([12]), steps=2),
     ValueError, r"labels must lie in \[0, 10\) or be the null label 10; got 12"),
    ("fsdd-sample-top-p", lambda c: c.fsdd.sample(c.dit, torch.tensor([1]), steps=2, top_p=1.5),
     ValueError, r"top_p must lie in \(0, 1\], got 1.5"),
    ("fsdd-sample-negative-guidance", lambda c: c.fsdd.sample(c.dit, torch.tensor([1]), steps=2, guidance=-1.0),
     ValueError, r"guidance must be a finite number >= 0, got -1.0"),
    ("fsdd-model-wrong-logits", lambda c: c.fsdd.sample(_bad_model, torch.tensor([1]), steps=2),
     ValueError, r"model must return logits of shape \(1, 32, 9\) \(B, C, M \+ 1\), got \(1, 32, 8\)"),
    ("fsdd-zero-steps", lambda c: c.fsdd.sample(c.dit, torch.tensor([1]), steps=0),
     ValueError, r"steps must be at least 1, got 0"),
    # ------------------------------------------------------------------ metrics
    ("psnr-shape-mismatch", lambda c: metrics.psnr(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 8, 8)),
     ValueError, r"preds and target differ in shape: \(2, 3, 16, 16\) vs \(2, 3, 8, 8\)"),
    ("ssim-too-small", lambda c: metrics.ssim(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)),
     ValueError, r"ssim: images must be at least 11x11"),
    ("psnr-out-of-range", lambda c: metrics.psnr(torch.full((1, 3, 16, 16), -3.0), torch.zeros(1, 3, 16, 16)),
     ValueError, r"preds: float values span \[-3, -3\], outside both \[0, 1\] and"),
    ("fid-one-image", lambda c: metrics.fid_kid(torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
                                                torch.zeros(4, 3, 16, 16, dtype=torch.uint8), extractor="dataset",
                                                weights=c.ckpt),
     ValueError, r"FID/KID need at least 2 images, got 1"),
    ("token-stats-out-of-range", lambda c: metrics.token_stats(torch.tensor([[0, 99]]), C),
     ValueError, r"tokens: codes span \[0, 99\], outside \[0, 32\)"),
    ("frechet-dims-differ", lambda c: metrics.frechet_distance(torch.randn(4, 3), torch.randn(4, 5)),
     ValueError, r"feature dimensions differ: 3 vs 5"),
    # ------------------------------------------------------------------ params files and the CLI
    ("params-unknown-key", lambda c: load_params(c.write_params("train: {preset: tiny, stpes: 5}"), "train"),
     ValueError, r"section 'train'.*unknown key\(s\) \['stpes'\]; expected keys are"),
    ("params-mistyped-value", lambda c: load_params(c.write_params("train: {preset: tiny, steps: ten}"), "train"),
     ValueError, r"section 'train': key 'steps' is 'ten' \(str\); expected an integer"),
    ("params-unknown-preset", lambda c: load_params(c.write_params("tokenizer: {preset: huge}"), "tokenizer"),
     ValueError, r"key 'preset' is 'huge'; expected one of \['paper', 'small', 'tiny'\]"),
    ("params-missing-file", lambda c: load_params(c.tmp / "nope.yaml", "train"),
     FileNotFoundError, r"params file .*nope.yaml does not exist"),
    ("params-bad-value", lambda c: load_params(c.write_params("train: {preset: tiny, lr: -1}"), "train"),
     ValueError, r"key 'lr' is -1.0; expected a positive number"),
    ("cli-typo-in-params", lambda c: train_mod.main(["--params", str(c.write_params(
        VALID_PARAMS.replace("steps: 2", "setps: 2"), "cli.yaml")), "--out", str(c.tmp / "out")]),
     ValueError, r"section 'train': unknown key\(s\) \['setps'\]"),
    # ------------------------------------------------------------------ checkpoints
    ("checkpoint-missing", lambda c: load_checkpoint(c.tmp / "absent.pt"),
     FileNotFoundError, r"checkpoint .*absent.pt does not exist"),
    ("checkpoint-truncated", lambda c: load_checkpoint(c.corrupt),
     CheckpointError, r"checkpoint .*corrupt.pt is truncated or corrupt"),
    ("from-checkpoint-truncated", lambda c: SetTokenizer.from_checkpoint(c.corrupt),
     CheckpointError, r"corrupt.pt is truncated or corrupt"),
    ("from-checkpoint-other-preset", lambda c: SetTokenizer.from_checkpoint(c.other_ckpt),
     ValueError, r"other.pt: 'ema' weights do not fit the saved tokenizer config"),
    ("trainer-resume-other-preset", lambda c: train_mod.Trainer(
        c.tok, TrainConfig.preset("tiny"), c.tmp / "run", loss_fn=None, config={}).load_state_dict(
        load_checkpoint(c.other_ckpt)),
     ValueError,
     r"'model' weights do not fit this model \(another preset\?\): "
     r"quantizer.codebook: checkpoint \(16, 8\), model \(32, 8\)"),
    # ------------------------------------------------------------------ data
    ("imagefolder-no-images", lambda c: data.load_dataset(_image_folder(c, empty=True), "train"),
     data.DataError, r"2 class folder\(s\) under .*train hold no images"),
    ("imagefolder-truncated-file", lambda c: data.load_dataset(_image_folder(c, truncated=True), "train"),
     data.DataError, r"(?s)1 unreadable or truncated image file\(s\).*cut.png: OSError"),
    ("imagefolder-missing-root", lambda c: data.load_dataset(dataclasses.replace(
        _image_folder(c), root=str(c.tmp / "nowhere")), "train"),
     data.DataError, r"nowhere/train does not exist; an ImageFolder needs <root>/train/<class>/<images>"),
    ("fit-tokenizer-float-images", lambda c: train_mod.fit_tokenizer(
        TOK_CFG, TrainConfig.preset("tiny"), torch.zeros(4, 3, 16, 16), torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
        c.tmp / "fit", progress=False, plot=False),
     ValueError, r"train_images: expected uint8 images \(N, 3, 16, 16\), got torch.float32"),
]


def test_catalogue_is_large_and_ids_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert all(issubclass(exc, (ValueError, FileNotFoundError)) for _, _, exc, _ in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error_and_changes_nothing(ctx, case):
    _, call, exc, pattern = case
    before_tok = {k: v.clone() for k, v in ctx.tok.state_dict().items()}
    before_dit = {k: v.clone() for k, v in ctx.dit.state_dict().items()}
    before_files = {p: p.read_bytes() for p in ctx.files}
    with pytest.raises(exc, match=pattern):
        call(ctx)
    for k, v in ctx.tok.state_dict().items():
        assert torch.equal(v, before_tok[k]), f"tokenizer weight {k} changed by a rejected call"
    for k, v in ctx.dit.state_dict().items():
        assert torch.equal(v, before_dit[k]), f"denoiser weight {k} changed by a rejected call"
    for path, content in before_files.items():
        assert path.read_bytes() == content, f"{path} changed by a rejected call"
    # the checkpoints are still loadable (or still refused) after the call
    assert load_checkpoint(ctx.ckpt)["step"] == 3
    with pytest.raises(CheckpointError):
        load_checkpoint(ctx.corrupt)
