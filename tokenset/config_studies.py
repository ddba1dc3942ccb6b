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

from tokenset.config_schema import Section, _check
from tokenset.config_sections import TokenizerConfig, TrainConfig

__all__ = ["ABLATION_ARMS", "STUDY_LOG_ROWS", "study_train", "AblationConfig", "SweepConfig"]


ABLATION_ARMS = ("set", "ordered", "mean", "pma", "hungarian", "chamfer")
STUDY_LOG_ROWS = 8  # validation rows that a study run's curve has at least


def study_train(train: TrainConfig, steps: int) -> TrainConfig:
    """The optimisation of a study run (an ablation arm, a sweep point): ``train`` at ``steps`` steps, stage 1 only
    (``disc_steps=0``), no wall-clock budget (every run gets exactly ``steps`` steps), a log row (with validation
    PSNR) at least every ``steps // STUDY_LOG_ROWS`` steps, so that short runs still draw a curve, and a warm-up of
    at most a quarter of the steps (a short run does not spend most of its budget warming up)."""
    return train.replace(steps=steps, disc_steps=0, max_minutes=0.0,
                         log_every=max(1, min(train.log_every, steps // STUDY_LOG_ROWS)),
                         warmup_steps=min(train.warmup_steps, steps // 4))


@dataclasses.dataclass(frozen=True)
class AblationConfig(Section):
    """Pooling vs matching vs set tokens (notebook 06): tokenizer arms trained under one budget.

    Arms: ``set`` (TokenSet), ``ordered`` (TiTok control), ``mean`` / ``pma`` (pooling), ``hungarian`` /
    ``chamfer`` (matching); each is the ``tokenizer`` section with one switch changed (``ordered`` or
    ``decoder_input``), trained with the ``train`` section at ``steps`` steps.
    """

    arms: tuple[Literal["set", "ordered", "mean", "pma", "hungarian", "chamfer"], ...]
    steps: int  # the shared budget: replaces train.steps for every arm
    psnr_threshold: float  # dB: report the first logged step (and wall time) at which val PSNR reaches it
    probe_images: int = 64  # first validation images whose assignment is tracked (matching instability)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(arms=ABLATION_ARMS, steps=15, psnr_threshold=10.0, probe_images=16),
        # 100 steps x 6 arms, one seed: a screen of how fast each arm starts, not a verdict (README, "Studies"; the
        # verdicts issue gives them seeds and a budget past the plateau). 12 dB: the Fashion-MNIST set tokenizer's
        # val PSNR at step 100 of the recipe probes (results/probes/tune_tokenizer/, 12.55-12.82 dB)
        "small": dict(arms=ABLATION_ARMS, steps=100, psnr_threshold=12.0, probe_images=64),
    }

    def __post_init__(self) -> None:
        _check(self, len(self.arms) >= 1 and len(set(self.arms)) == len(self.arms), "arms",
               f"a non-empty list of distinct arms from {list(ABLATION_ARMS)}")
        _check(self, self.steps >= 1, "steps", "at least 1")
        _check(self, math.isfinite(self.psnr_threshold) and self.psnr_threshold > 0, "psnr_threshold",
               "a positive number of dB")
        _check(self, self.probe_images >= 1, "probe_images", "at least 1")

    @staticmethod
    def arm_tokenizer(tokenizer: TokenizerConfig, arm: str) -> TokenizerConfig:
        """The tokenizer of ``arm``: ``tokenizer`` with ``ordered`` and ``decoder_input`` set for it, nothing else."""
        if arm not in ABLATION_ARMS:
            raise ValueError(f"arm: expected one of {list(ABLATION_ARMS)}, got {arm!r}")
        if arm == "ordered":
            return tokenizer.replace(ordered=True, decoder_input="set")
        return tokenizer.replace(ordered=False, decoder_input=arm)

    def arm_train(self, train: TrainConfig) -> TrainConfig:
        """The shared optimisation of every arm (``study_train``; stage 1 only: the matching loss exists only there)."""
        return study_train(train, self.steps)


@dataclasses.dataclass(frozen=True)
class SweepConfig(Section):
    """Tokens and codebook size (notebook 09; the trend of the paper's Table 6 at small scale).

    The grid has one row per M (``num_tokens``) and one column per C (``codebook_sizes``). Each point is the
    ``tokenizer`` section with ``num_tokens`` and ``codebook_size`` replaced, trained with the ``train`` section at
    ``steps`` steps. ``grid: cross`` trains the centre row (M = ``centre_tokens``, every C) and the centre column
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

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(num_tokens=(4, 8), codebook_sizes=(16, 32), centre_tokens=8, centre_codebook=32, grid="cross",
                     steps=10, fsdd_steps=5),
        # cross = 5 points of 100 steps around the `small` tokenizer (M = 64, C = 1024: the ablation's `set` arm, whose
        # run is reused). Like the ablation, a screen of early training, not of capacity (README, "Studies"). FSDD on
        # the centre row: 20 steps each (the generators get 300), as its cost grows with C (results/bench/denoiser.md),
        # scored on eval.study_samples
        "small": dict(num_tokens=(16, 32, 64), codebook_sizes=(256, 512, 1024), centre_tokens=64,
                      centre_codebook=1024, grid="cross", steps=100, fsdd_steps=20),
    }

    def __post_init__(self) -> None:
        for key in ("num_tokens", "codebook_sizes"):
            values = getattr(self, key)
            _check(self, len(values) >= 1 and len(set(values)) == len(values) and min(values) >= 1, key,
                   "a non-empty list of distinct positive integers")
        _check(self, self.centre_tokens in self.num_tokens, "centre_tokens",
               f"one of num_tokens {list(self.num_tokens)}")
        _check(self, self.centre_codebook in self.codebook_sizes, "centre_codebook",
               f"one of codebook_sizes {list(self.codebook_sizes)}")
        _check(self, self.steps >= 1, "steps", "at least 1")
        _check(self, self.fsdd_steps >= 0, "fsdd_steps", "a non-negative integer (0: no FSDD on the centre row)")

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

    @staticmethod
    def point_tokenizer(tokenizer: TokenizerConfig, num_tokens: int, codebook_size: int) -> TokenizerConfig:
        """The tokenizer of one grid point: ``tokenizer`` with M and C replaced, nothing else."""
        return tokenizer.replace(num_tokens=num_tokens, codebook_size=codebook_size)

    def point_train(self, train: TrainConfig) -> TrainConfig:
        """The shared optimisation of every point (``study_train``, as the ablation's arms)."""
        return study_train(train, self.steps)

    def fsdd_train(self, train_generator: TrainConfig) -> TrainConfig:
        """The FSDD optimisation on each centre-row point: ``train_generator`` at ``fsdd_steps`` steps."""
        if self.fsdd_steps < 1:
            raise ValueError("fsdd_steps is 0: this sweep trains no FSDD (set sweep.fsdd_steps in params.yaml)")
        return train_generator.replace(steps=self.fsdd_steps, max_minutes=0.0)
