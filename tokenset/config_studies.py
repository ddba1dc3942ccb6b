"""The study sections of ``params.yaml``: the tokenizer ablation (``ablation``) and the tokens / codebook sweep
(``sweep``).

Each study trains tokenizers derived from the ``tokenizer`` section (one switch or one size changed) under one shared
optimisation derived from the ``train`` section (``study_train``): ``AblationConfig`` names its arms
(``ABLATION_ARMS``), ``SweepConfig`` its grid of (M, C) points. Imports nothing from tokenset but
``tokenset.config_schema`` and ``tokenset.config_sections``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

from tokenset.config_schema import Section, _check, _distinct
from tokenset.config_sections import TokenizerConfig, TrainConfig

__all__ = ["ABLATION_ARMS", "STUDY_LOG_ROWS", "STUDY_MIN_BYPASS", "study_train", "study_model", "AblationConfig",
           "SweepConfig"]


ABLATION_ARMS = ("set", "ordered", "mean", "pma", "hungarian", "chamfer")
STUDY_LOG_ROWS = 8  # validation rows that a study run's curve has at least
STUDY_MIN_BYPASS = 150  # steps of quantizer bypass that a study run keeps at least (where its `train` bypasses)


def study_train(train: TrainConfig, steps: int, seed: int | None = None) -> TrainConfig:
    """The optimisation of a study run (an ablation arm, a sweep point): ``train`` at ``steps`` steps, stage 1 only
    (``disc_steps=0``), no wall-clock budget (every run gets exactly ``steps`` steps), a log row (with validation
    PSNR) at least every ``steps // STUDY_LOG_ROWS`` steps, so that short runs still draw a curve, a warm-up of
    at most a quarter of the steps (a short run does not spend most of its budget warming up), and, where ``train``
    bypasses the quantizer at first (``quantizer_warmup`` > 0), a bypass of at least ``STUDY_MIN_BYPASS`` steps (at
    most half of a short run): a 600-step run of the study model that bypassed 60 used 19% of its codes at step
    225, against 54% at step 200 after the 150-step bypass of its 1500-step probe, and a 75-step bypass let a
    750-step run of the 128-wide model collapse (docs/experiments.md, sessions 9 and 10). At the `small` recipe's
    own steps the result is ``train`` itself, so the headline tokenizer's runs are the studies' runs (reused, not
    trained twice).
    ``seed`` (when given) replaces ``train.seed``: one independent run of the study."""
    warmup = max(train.quantizer_warmup, min(STUDY_MIN_BYPASS / steps, 0.5)) if train.quantizer_warmup > 0 else 0.0
    return train.replace(steps=steps, disc_steps=0, max_minutes=0.0,
                         log_every=max(1, min(train.log_every, steps // STUDY_LOG_ROWS)),
                         warmup_steps=min(train.warmup_steps, steps // 4), quantizer_warmup=warmup,
                         seed=train.seed if seed is None else seed)


def study_model(tokenizer: TokenizerConfig, width: int = 0, depth: int = 0, heads: int = 0, num_tokens: int = 0,
                codebook_size: int = 0, head_channels: int = 0) -> TokenizerConfig:
    """The model of a study: ``tokenizer`` with the encoder's and decoder's width, depth and heads, M and C, and the
    pixel head's channels replaced where the value is not 0 (0 keeps the section's). A study may use another model
    than the headline tokenizer (at `small` it is the same one); its tables say which."""
    sizes = dict(width=width, decoder_width=width, depth=depth, decoder_depth=depth, heads=heads,
                 decoder_heads=heads, num_tokens=num_tokens, codebook_size=codebook_size, head_channels=head_channels)
    return tokenizer.replace(**{k: v for k, v in sizes.items() if v})


def _check_study(cfg: Section) -> None:
    """The checks of the fields a study shares: seeds and the study model's sizes."""
    _check(cfg, _distinct(cfg.seeds), "seeds", "a non-empty list of distinct seeds")
    for key in ("width", "depth", "heads", "head_channels"):
        _check(cfg, getattr(cfg, key) >= 0, key, "0 (the tokenizer section's) or a positive integer")


# the study model of the `small` studies: the `small` tokenizer (64 wide, 2 + 2 blocks of 2 heads, 32 tokens of 512
# codes, a conv pixel head of 16 channels; see TokenizerConfig's preset), written out so that a tokenizer section of
# other sizes still gets it. Since #16 the headline tokenizer is this model: its runs are the studies' set / ordered
# runs and the sweep's centre (reused, not trained again)
_SMALL_STUDY_MODEL = dict(width=64, depth=2, heads=2, head_channels=16)


@dataclasses.dataclass(frozen=True)
class AblationConfig(Section):
    """Pooling vs matching vs set tokens (notebook 06): tokenizer arms trained under one budget.

    Arms: ``set`` (TokenSet), ``ordered`` (TiTok control), ``mean`` / ``pma`` (pooling), ``hungarian`` /
    ``chamfer`` (matching); each is the study model (``study_model``: the ``tokenizer`` section with the sizes given
    here) with one switch changed (``ordered`` or ``decoder_input``), trained with the ``train`` section at ``steps``
    steps, once per seed of ``seeds``.
    """

    arms: tuple[Literal["set", "ordered", "mean", "pma", "hungarian", "chamfer"], ...]
    steps: int  # the shared budget: replaces train.steps for every arm
    psnr_threshold: float  # dB: report the first logged step (and wall time) at which val PSNR reaches it
    probe_images: int = 64  # first validation images whose assignment is tracked (matching instability)
    seeds: tuple[int, ...] = (0,)  # independent runs of every arm (train.seed); a verdict needs >= 3
    width: int = 0  # the study model (study_model): 0 keeps the tokenizer section's value
    depth: int = 0
    heads: int = 0
    num_tokens: int = 0
    codebook_size: int = 0
    head_channels: int = 0  # channels of the conv pixel head (0 keeps the tokenizer section's)

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("seeds", "width", "depth", "heads", "num_tokens", "codebook_size",
                                                  "head_channels")
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(arms=ABLATION_ARMS, steps=15, psnr_threshold=10.0, probe_images=16, seeds=(0, 1)),
        # 6 arms x 3 seeds of the study model at 1500 steps, where its curve flattens (+0.08 dB over the last 300
        # steps of its probe, results/probes/tune_tokenizer/study_w64_d2_m32_c512_1500.json); set and ordered are the
        # tokenizer stage's runs, reused. 14 dB: the study model's val PSNR near step 300 of that probe
        "small": dict(arms=ABLATION_ARMS, steps=1500, psnr_threshold=14.0, probe_images=64, seeds=(0, 1, 2),
                      num_tokens=32, codebook_size=512, **_SMALL_STUDY_MODEL),
    }

    def __post_init__(self) -> None:
        _check(self, _distinct(self.arms), "arms",
               f"a non-empty list of distinct arms from {list(ABLATION_ARMS)}")
        _check(self, self.steps >= 1, "steps", "at least 1")
        _check(self, math.isfinite(self.psnr_threshold) and self.psnr_threshold > 0, "psnr_threshold",
               "a positive number of dB")
        _check(self, self.probe_images >= 1, "probe_images", "at least 1")
        _check_study(self)
        for key in ("num_tokens", "codebook_size"):
            _check(self, getattr(self, key) >= 0, key, "0 (the tokenizer section's) or a positive integer")

    def tokenizer(self, tokenizer: TokenizerConfig, arm: str) -> TokenizerConfig:
        """The tokenizer of ``arm`` in this study: the study model, then ``arm_tokenizer``."""
        return self.arm_tokenizer(study_model(tokenizer, self.width, self.depth, self.heads, self.num_tokens,
                                              self.codebook_size, self.head_channels), arm)

    @staticmethod
    def arm_tokenizer(tokenizer: TokenizerConfig, arm: str) -> TokenizerConfig:
        """The tokenizer of ``arm``: ``tokenizer`` with ``ordered`` and ``decoder_input`` set for it, nothing else."""
        if arm not in ABLATION_ARMS:
            raise ValueError(f"arm: expected one of {list(ABLATION_ARMS)}, got {arm!r}")
        if arm == "ordered":
            return tokenizer.replace(ordered=True, decoder_input="set")
        return tokenizer.replace(ordered=False, decoder_input=arm)

    def arm_train(self, train: TrainConfig, seed: int | None = None) -> TrainConfig:
        """The shared optimisation of every arm (``study_train``; stage 1 only: the matching loss exists only there),
        with ``train.seed`` replaced by ``seed`` when given."""
        return study_train(train, self.steps, seed)


@dataclasses.dataclass(frozen=True)
class SweepConfig(Section):
    """Tokens and codebook size (notebook 09; the trend of the paper's Table 6 at small scale).

    The grid has one row per M (``num_tokens``) and one column per C (``codebook_sizes``). Each point is the
    study model (``study_model``: the ``tokenizer`` section with the sizes given here) with ``num_tokens`` and
    ``codebook_size`` replaced, trained with the ``train`` section at ``steps`` steps, once per seed of ``seeds``.
    ``grid: cross`` trains the centre row (M = ``centre_tokens``, every C) and the centre column
    (C = ``centre_codebook``, every M); ``grid: full`` trains every (M, C) pair.
    """

    num_tokens: tuple[int, ...]  # M values
    codebook_sizes: tuple[int, ...]  # C values
    centre_tokens: int  # the M of the centre row
    centre_codebook: int  # the C of the centre column
    grid: Literal["cross", "full"]
    steps: int  # the budget of every point: replaces train.steps
    # FSDD on the centre row: a count denoiser (the denoiser section at C, M of the point) trained for fsdd_steps
    # (replaces train_generator.steps) on each point's tokens, scored by gFID at eval.num_samples; 0 skips it
    fsdd_steps: int = 0
    seeds: tuple[int, ...] = (0,)  # independent runs of every point (train.seed); FSDD trains on the first seed's
    width: int = 0  # the study model (study_model): 0 keeps the tokenizer section's value
    depth: int = 0
    heads: int = 0
    head_channels: int = 0  # channels of the conv pixel head (0 keeps the tokenizer section's)

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("seeds", "width", "depth", "heads", "head_channels")
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(num_tokens=(4, 8), codebook_sizes=(16, 32), centre_tokens=8, centre_codebook=32, grid="cross",
                     steps=10, fsdd_steps=5, seeds=(0, 1)),
        # cross = 5 points x 3 seeds of the ablation's study model at its budget (1500 steps), around its M = 32,
        # C = 512: the centre point of each seed is the ablation's `set` arm, whose run is reused. FSDD on the centre
        # row: 20 steps each (the generators get 300), as its cost grows with C (results/bench/denoiser.md), scored on
        # eval.study_samples
        "small": dict(num_tokens=(16, 32, 64), codebook_sizes=(256, 512, 1024), centre_tokens=32,
                      centre_codebook=512, grid="cross", steps=1500, fsdd_steps=20, seeds=(0, 1, 2),
                      **_SMALL_STUDY_MODEL),
    }

    def __post_init__(self) -> None:
        for key in ("num_tokens", "codebook_sizes"):
            values = getattr(self, key)
            _check(self, _distinct(values) and min(values) >= 1, key,
                   "a non-empty list of distinct positive integers")
        _check(self, self.centre_tokens in self.num_tokens, "centre_tokens",
               f"one of num_tokens {list(self.num_tokens)}")
        _check(self, self.centre_codebook in self.codebook_sizes, "centre_codebook",
               f"one of codebook_sizes {list(self.codebook_sizes)}")
        _check(self, self.steps >= 1, "steps", "at least 1")
        _check(self, self.fsdd_steps >= 0, "fsdd_steps", "a non-negative integer (0: no FSDD on the centre row)")
        _check_study(self)

    def centre_row(self) -> list[tuple[int, int]]:
        """(M, C) of the centre row: M = ``centre_tokens``, every C in increasing order."""
        return [(self.centre_tokens, c) for c in sorted(self.codebook_sizes)]

    def centre_column(self) -> list[tuple[int, int]]:
        """(M, C) of the centre column: C = ``centre_codebook``, every M in increasing order."""
        return [(m, self.centre_codebook) for m in sorted(self.num_tokens)]

    def points(self) -> list[tuple[int, int]]:
        """The (M, C) pairs to train, each once, sorted by M then C: the centre row and column (``cross``; the centre
        point is shared) or every pair (``full``)."""
        if self.grid == "full":
            return [(m, c) for m in sorted(self.num_tokens) for c in sorted(self.codebook_sizes)]
        return sorted(set(self.centre_row()) | set(self.centre_column()))

    def point_tokenizer(self, tokenizer: TokenizerConfig, num_tokens: int, codebook_size: int) -> TokenizerConfig:
        """The tokenizer of one grid point: the study model with M and C replaced, nothing else."""
        return study_model(tokenizer, self.width, self.depth, self.heads, num_tokens, codebook_size,
                           self.head_channels)

    def point_train(self, train: TrainConfig, seed: int | None = None) -> TrainConfig:
        """The shared optimisation of every point (``study_train``, as the ablation's arms), with ``train.seed``
        replaced by ``seed`` when given."""
        return study_train(train, self.steps, seed)

    def fsdd_train(self, train_generator: TrainConfig) -> TrainConfig:
        """The FSDD optimisation on each centre-row point: ``train_generator`` at ``fsdd_steps`` steps."""
        if self.fsdd_steps < 1:
            raise ValueError("fsdd_steps is 0: this sweep trains no FSDD (set sweep.fsdd_steps in params.yaml)")
        return train_generator.replace(steps=self.fsdd_steps, max_minutes=0.0)
