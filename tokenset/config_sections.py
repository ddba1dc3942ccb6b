"""The pipeline's configuration sections: one frozen dataclass per ``params.yaml`` section, with size presets.

``DataConfig`` (``data``), ``TokenizerConfig`` (``tokenizer``), ``TrainConfig`` (``train`` and ``train_generator``),
``DenoiserConfig`` (``denoiser``), ``FSDDConfig`` (``fsdd``), ``EvalConfig`` (``eval``) and ``RuntimeConfig``
(``runtime``: where the stages run), and the two choices of
FSDD as enums (``SigmaSchedule``, ``NoiseKind``). Each class's ``PRESETS`` registry holds its ``tiny`` / ``small`` /
``paper`` sizes; ``__post_init__`` checks value ranges. The study sections (ablation, sweep) are
``tokenset.config_studies``; reading ``params.yaml`` is ``tokenset.config.load_params``. Imports nothing from tokenset
but ``tokenset.config_schema``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from typing import Any, ClassVar, Literal, get_args

from tokenset.config_schema import Section, _check, _distinct

__all__ = ["SigmaSchedule", "NoiseKind", "DataConfig", "TokenizerConfig", "TrainConfig", "DenoiserConfig",
           "FSDDConfig", "EvalConfig", "RuntimeConfig"]


class SigmaSchedule(str, enum.Enum):
    """How FSDD's sampling spread sigma is scaled over the sampling steps (``f(step)`` in the paper)."""

    SIGMOID = "sigmoid"  # ~1 early, falls to ~0 over the last steps (the paper's choice)
    LINEAR = "linear"  # 1 - t
    CONSTANT = "constant"  # 1 (no annealing; an ablation)


class NoiseKind(str, enum.Enum):
    """The fixed-sum prior x0 of FSDD."""

    BINARY = "binary"  # a uniformly random 0/1 vector with exactly M ones (the official code)
    MULTINOMIAL = "multinomial"  # M draws with replacement, uniform over the C positions


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Which images, at what size, split how."""

    name: Literal["crawl", "fashion", "imagefolder"]
    root: str  # data directory (raw/ and prepared/ live below it), or the ImageFolder root
    image_size: int  # images are square: (3, image_size, image_size)
    val_fraction: float  # share of each class held out for validation (crawl, imagefolder without val/)
    seed: int  # seed of the deterministic train/val split
    skip_bad_files: bool = False  # True: skip unreadable images and report how many; False: raise listing them
    # crawl only: the sprite sheets of crawl-tiles-data used, one class each. Only sheets on a 32 px grid can be
    # sliced; main/player/feat/gui/icons are bounding-box-packed atlases (see tokenset.data) and are refused.
    crawl_sheets: tuple[str, ...] = ("floor", "wall")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(name="crawl", root="data", image_size=32, val_fraction=0.1, seed=0),
        # Fashion-MNIST: its own 60k train / 10k test split (val_fraction is unused), 28 px centre-padded to 32
        "small": dict(name="fashion", root="data", image_size=32, val_fraction=0.1, seed=0),
        "paper": dict(name="imagefolder", root="data/imagenet", image_size=256, val_fraction=0.0, seed=0),
    }

    def __post_init__(self) -> None:
        _check(self, self.image_size > 0, "image_size", "a positive integer")
        _check(self, 0.0 <= self.val_fraction < 1.0, "val_fraction", "a number in [0, 1)")
        _check(self, _distinct(self.crawl_sheets) and all(s and s.isidentifier() for s in self.crawl_sheets),
               "crawl_sheets", "a non-empty list of distinct sheet names such as [floor, wall]")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Section):
    """The set tokenizer (and, with ``ordered=True``, its TiTok-style ordered control)."""

    image_size: int
    patch_size: int
    width: int  # encoder transformer width
    depth: int
    heads: int
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    num_tokens: int  # M: latent tokens per image
    codebook_size: int  # C
    token_dim: int  # dimension of the (L2-normalised) codes
    pixel_head: Literal["linear", "conv", "vqgan"]  # how decoder features become pixels
    head_channels: int = 32  # channels of the conv / vqgan pixel head (vqgan: base of its (1,1,2,2,4) multipliers)
    mlp_ratio: float = 4.0
    ordered: bool = False  # True: latent positional embedding + fixed order (the TiTok control)
    # how the decoder sees the tokens (ablation arms; hungarian / chamfer: tokenset.baselines.matching)
    decoder_input: Literal["set", "mean", "pma", "hungarian", "chamfer"] = "set"
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    dead_code_restart: bool = True  # re-seed unused codes from recent encoder outputs
    dead_code_every: int = 100  # steps between restarts
    channels_in: int = 3
    match_weight: float = 1.0  # hungarian / chamfer: weight of the matching loss added to the pixel loss
    slot_depth: int = 1  # hungarian / chamfer: self-attention blocks of the slot generator

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("match_weight", "slot_depth")
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            image_size=16, patch_size=4, width=32, depth=1, heads=2, decoder_width=32, decoder_depth=1,
            decoder_heads=2, num_tokens=8, codebook_size=32, token_dim=8, pixel_head="linear",
        ),
        # Fashion-MNIST (#15, #16): 32 tokens of 512 codes (288 bits; an 8 x 8 grey thumbnail is 512), 64 wide, 2 + 2
        # blocks of 2 heads, a conv pixel head of 16 channels. One model for every stage: the headline tokenizer's
        # runs are also the ablation's set / ordered arms and the sweep's centre (#16), trained to where the curve
        # flattens within the budget: 18.05 dB after 1500 steps, +0.08 over the last 300
        # (results/probes/tune_tokenizer/study_w64_d2_m32_c512_1500.json, head 32; 16 trains in ~60% of the time at
        # the same val PSNR: results/probes/tune_tokenizer/study_head16_600_seed{0,1}.json). The 128-wide 3 + 3
        # model with 64 tokens of 1024 codes reached 17.63 +- 0.21 dB at 750 steps and 19.15 at 1250, still climbing
        # (docs/experiments.md, session 10). Patch 8 (a 4 x 4 grid): patch 4 was no better at equal steps (15.54 vs
        # 15.71 dB at step 500 of the 128-wide model) and 1.5x slower per step
        # (results/probes/tune_tokenizer/killed_m64c1024_qw_900_patch4_log.csv vs m64c1024_qw_900.json's log)
        "small": dict(
            image_size=32, patch_size=8, width=64, depth=2, heads=2, decoder_width=64, decoder_depth=2,
            decoder_heads=2, num_tokens=32, codebook_size=512, token_dim=12, pixel_head="conv", head_channels=16,
        ),
        "paper": dict(
            image_size=256, patch_size=16, width=768, depth=12, heads=12, decoder_width=768, decoder_depth=12,
            decoder_heads=12, num_tokens=128, codebook_size=4096, token_dim=12, pixel_head="vqgan",
            head_channels=128, dead_code_restart=False,
        ),
    }

    def __post_init__(self) -> None:
        _check(self, self.image_size % self.patch_size == 0, "image_size",
               f"a multiple of patch_size={self.patch_size}")
        _check(self, self.width % self.heads == 0, "width", f"divisible by heads={self.heads}")
        _check(self, self.decoder_width % self.decoder_heads == 0, "decoder_width",
               f"divisible by decoder_heads={self.decoder_heads}")
        for key in ("num_tokens", "codebook_size", "token_dim", "depth", "decoder_depth", "slot_depth"):
            _check(self, getattr(self, key) >= 1, key, "at least 1")
        _check(self, math.isfinite(self.match_weight) and self.match_weight >= 0, "match_weight",
               "a finite non-negative number")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """An optimisation run (the tokenizer's in section ``train``, the generators' in ``train_generator``)."""

    steps: int
    batch_size: int
    lr: float  # peak learning rate of AdamW
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 50  # steps between CSV log rows (and validation PSNR for tokenizers)
    ckpt_every: int = 500  # steps between checkpoints (one is always written at the end)
    seed: int = 0
    flip: bool = True  # random horizontal flip augmentation
    rotate: bool = False  # random rotations by multiples of 90 degrees (with flip: all 8 symmetries of the square)
    disc_steps: int = 0  # tokenizer stage 2: decoder-only steps with a patch discriminator (0: off)
    disc_weight: float = 0.1
    max_minutes: float = 0.0  # wall-clock budget; 0 means no budget (stop at ``steps``)
    anneal_to_budget: bool = False  # with max_minutes: decay the lr by max(step, time) progress (not reproducible)
    val_limit: int = 0  # validation images evaluated at each log row (0: all); the final evaluation uses all
    num_workers: int = 0
    amp: bool = False  # bf16 autocast (GPU only; on CPU it is emulated and slow)
    # tokenizers: share of the stage-1 steps in which the decoder sees the encoder's L2-normalised outputs instead
    # of their codes (the quantizer's losses and dead-code restarts still run; evaluation is always quantised)
    quantizer_warmup: float = 0.0
    # independent runs of one stage (tokenizer arms, ablation arms, sweep points) trained at once in this many
    # processes, each with the cores divided among them (tokenset.parallel); numerics follow the thread count
    workers: int = 1

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("quantizer_warmup", "workers")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(steps=20, batch_size=16, lr=1e-3, warmup_steps=2, log_every=5, ckpt_every=10),
        # Fashion-MNIST (#15, #16): 1500 steps at lr 2e-3 of the `small` tokenizer (~100 s a run on 2 cores), to where
        # its curve flattens (+0.08 dB over the last 300 steps of its probe, results/probes/tune_tokenizer/
        # study_w64_d2_m32_c512_1500.json), the quantizer bypassed for the first 150 (a bypass of 75 let a 750-step
        # run of the 128-wide model collapse to 2% of the codes at step 200 and 12 dB, never to recover:
        # docs/experiments.md, session 10; study_train keeps at least STUDY_MIN_BYPASS steps), no stage 2
        "small": dict(steps=1500, batch_size=32, lr=2e-3, warmup_steps=100, log_every=100, ckpt_every=300,
                      max_minutes=0.0, ema_decay=0.995, disc_steps=0, disc_weight=0.0, quantizer_warmup=0.1,
                      val_limit=500),
        "paper": dict(steps=1_000_000, batch_size=256, lr=1e-4, warmup_steps=10_000, log_every=500,
                      ckpt_every=5000, num_workers=8, amp=True),
    }

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "log_every", "ckpt_every"):
            _check(self, getattr(self, key) >= 1, key, "at least 1")
        _check(self, self.lr > 0, "lr", "a positive number")
        _check(self, 0.0 <= self.ema_decay < 1.0, "ema_decay", "a number in [0, 1)")
        _check(self, 0.0 <= self.quantizer_warmup < 1.0, "quantizer_warmup", "a share of the steps in [0, 1)")
        _check(self, isinstance(self.workers, int) and self.workers >= 1, "workers", "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class DenoiserConfig(Section):
    """CountDiT: the network FSDD calls as model(z, t, labels)."""

    codebook_size: int  # C: sequence length (one position per code)
    total: int  # M: counts range over 0..M
    num_classes: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0  # MLP hidden width = int(width * mlp_ratio)
    class_dropout: float = 0.1  # probability of the null class in training (classifier-free guidance)
    time_freq_dim: int = 256  # sinusoidal features of t before the timestep MLP (DiT's 256)
    patch: int = 1  # codebook entries per sequence position (1: the paper's one position per entry)

    # The same width/depth/heads also size the baselines (tokenset.baselines), so comparisons are fair.
    # S and B are the paper's DiT-S / DiT-B (36M / 137M at C=4096, M=128; see tokenset/denoiser.py for the count).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(num_classes=10, width=32, depth=1, heads=2),
        # width 64 / depth 3: 0.61 s per FSDD training step against 1.19 s for 96 / 3 and 1.71 s for 128 / 4 at C=512,
        # M=32, B=32 on 2 cores (benchmarks/bench_denoiser.py, results/bench/denoiser.md). Trained 300 steps on the
        # same tokens, 64 / 3 scored gFID 235.4 / 227.5 (seeds 0 / 1) against 236.6 / 226.9 for 96 / 3 and samples
        # 2.4x faster (experiments/probe_fsdd_width.py, README "Denoiser width")
        # patch 8: eight codebook entries per position, so a C = 1024 count vector is 128 positions. 0.104 s per
        # training step against 1.250 s with patch 1 at C = 1024, M = 64, B = 32 (bench_denoiser.py --patches 1 4 8
        # 16; results/bench/denoiser.md, session 9)
        "small": dict(num_classes=10, width=64, depth=3, heads=4, patch=8),
        "S": dict(num_classes=1000, width=384, depth=12, heads=6),
        "B": dict(num_classes=1000, width=768, depth=12, heads=12),
    }

    def __post_init__(self) -> None:
        _check(self, self.heads >= 1, "heads", "at least 1")
        _check(self, self.width % self.heads == 0, "width", f"divisible by heads={self.heads}")
        for key in ("codebook_size", "total", "num_classes", "depth", "width", "time_freq_dim", "patch"):
            _check(self, getattr(self, key) >= 1, key, "at least 1")
        _check(self, self.mlp_ratio > 0, "mlp_ratio", "a positive number")
        _check(self, self.codebook_size % self.patch == 0, "patch", f"a divisor of codebook_size={self.codebook_size}")
        _check(self, 0.0 <= self.class_dropout < 1.0, "class_dropout", "a number in [0, 1)")


@dataclasses.dataclass(frozen=True)
class FSDDConfig(Section):
    """Fixed-Sum Discrete Diffusion: the prior and the sampler's choices."""

    steps: int = 25
    top_p: float = 0.8
    guidance: float = 1.0  # 1.0 = no classifier-free guidance
    sigma_schedule: SigmaSchedule = SigmaSchedule.SIGMOID
    noise: NoiseKind = NoiseKind.BINARY
    sigmoid_steepness: float = 100.0  # SIGMOID f(s) = sigmoid(-steepness * (s - midpoint)), s = (step+1)/steps
    sigmoid_midpoint: float = 0.8  # (the official sampler's default "sigmoid100_0.8")
    train_sigma_schedule: SigmaSchedule = SigmaSchedule.CONSTANT  # training kernel's f(t); CONSTANT = the paper's

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(steps=5),
        "small": dict(),
        "paper": dict(guidance=2.0),
    }

    def __post_init__(self) -> None:
        _check(self, self.steps >= 1, "steps", "at least 1")
        _check(self, 0.0 < self.top_p <= 1.0, "top_p", "a number in (0, 1]")
        _check(self, self.guidance >= 0.0, "guidance", "a non-negative number")


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """Evaluation: sample counts, seeds, feature extractor."""

    # images per run of the study stages when study_samples is 0. Claim 6's sample counts, trained seeds and guidance
    # sweep are GenerationConfig's
    num_samples: int
    seeds: tuple[int, ...]  # the sweep's FSDD cell samples with the first
    extractor: Literal["inception", "dataset"]  # dataset: the small extractor trained on the data (smoke only)
    batch_size: int = 50  # images per feature-extractor batch
    kid_subset_size: int = 1000  # clamped (with a warning) to the smaller sample count
    kid_subsets: int = 100
    prc_neighborhood: int = 3  # k of the k-NN balls of precision / recall
    dataset_extractor_steps: int = 500  # training steps of the small data-set CNN (extractor: dataset)
    cache_dir: str | None = None  # wheels, Inception weights, real features; None: $TOKENSET_CACHE or ~/.cache/tokenset
    # images per run in the study stages (ablation rFID, sweep rFID and gFID); 0: num_samples
    study_samples: int = 0
    # the real reference of every FID: a fixed random subset of this many validation images (seed 0), the same in
    # every stage, so its Inception features are computed once; 0: all validation images. rFID reconstructs exactly
    # these images; the real-vs-real floor scores as many training images against them
    reference_samples: int = 0
    # independent training runs (seeds) of each tokenizer arm in stage `tokenizer`: mean +- std (ddof 1) over them;
    # the first is the headline checkpoint every later stage uses
    tokenizer_seeds: tuple[int, ...] = (0,)

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("study_samples", "reference_samples", "tokenizer_seeds")
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(num_samples=64, seeds=(0,), extractor="dataset"),
        # The studies score 64 images per run with Inception (~8 images/s on 2 CPU cores): comparable within a
        # study, not with the tokenizer stage's rFID (all 1000 reference images) nor with GenerationConfig's scores
        "small": dict(num_samples=96, seeds=(0, 1), extractor="inception",
                      study_samples=64, reference_samples=1000, tokenizer_seeds=(0, 1, 2)),
        "paper": dict(num_samples=50_000, seeds=(0,), extractor="inception"),
    }

    def __post_init__(self) -> None:
        _check(self, self.num_samples >= 2, "num_samples", "at least 2")
        _check(self, len(self.seeds) >= 1, "seeds", "at least one seed")
        _check(self, self.batch_size >= 1, "batch_size", "at least 1")
        _check(self, self.kid_subset_size >= 2, "kid_subset_size", "at least 2")
        _check(self, self.kid_subsets >= 1, "kid_subsets", "at least 1")
        _check(self, self.prc_neighborhood >= 1, "prc_neighborhood", "at least 1")
        _check(self, self.dataset_extractor_steps >= 1, "dataset_extractor_steps", "at least 1")
        _check(self, self.study_samples == 0 or self.study_samples >= 2, "study_samples",
               "0 (num_samples) or at least 2")
        _check(self, self.reference_samples == 0 or self.reference_samples >= 2, "reference_samples",
               "0 (all validation images) or at least 2")
        _check(self, _distinct(self.tokenizer_seeds), "tokenizer_seeds", "a non-empty list of distinct seeds")

    @property
    def study_count(self) -> int:
        """Images per run in the study stages (ablation, sweep): ``study_samples``, or ``num_samples`` if it is 0."""
        return self.study_samples or self.num_samples


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


GeneratorName = Literal["fsdd", "masked_sorted", "masked_ordered", "ar_sorted"]  # tokenset.generators.GENERATORS
GENERATOR_NAMES: tuple[str, ...] = get_args(GeneratorName)


@dataclasses.dataclass(frozen=True)
class GenerationConfig(Section):
    """Claim 6 (stages generators and fid_tables): how many generators are trained and how they are scored.

    Every generator of ``generators`` (names of ``tokenset.generators.GENERATORS``) is trained once per seed of
    ``seeds`` (independent runs: initialisation and batches); the first seed's models also draw the sample grid,
    FSDD's loss across t and the guidance sweep. Each trained generator draws ``samples_per_class`` images of every
    class (class-balanced), scored against ``reference_samples`` validation images (0: all) by ``extractor``, beside
    the real-vs-real floor at the same counts. ``extractor: dataset`` is a CNN trained on the training images for
    ``extractor_steps`` steps (``tokenset.dataset_extractor``); it also classifies the samples (class accuracy). Its
    numbers are not Inception numbers, and no table mixes the two.
    """

    seeds: tuple[int, ...]
    samples_per_class: int
    extractor: Literal["inception", "dataset"]
    # the generators trained and scored (the keys of tokenset.generators.GENERATORS; FSDD always)
    generators: tuple[GeneratorName, ...] = GENERATOR_NAMES
    extractor_steps: int = 3000
    reference_samples: int = 0
    guidance_scales: tuple[float, ...] = (1.0,)  # the sweep of FSDD and masked_sorted (first seed)
    grid_per_class: int = 8  # samples per class in the grid figure

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(seeds=(0, 1), samples_per_class=6, extractor="dataset", extractor_steps=100,
                     guidance_scales=(1.0, 2.0), grid_per_class=2),
        # 1000 class-balanced samples per trained generator against the 10k validation images. Inception runs at
        # ~8 images/s on 2 cores (results/bench/metrics.md): 10k references and 12k samples would take ~45 minutes,
        # so the CPU preset scores with the Fashion-MNIST CNN (~6k images/s), which also reads the class of a sample
        # The three generators of claim 6 (the paper's Table 5); masked_ordered (the same masked diffusion over the
        # ordered control's tokens) is left out to keep `make repro` within its budget: `generation.generators`
        "small": dict(seeds=(0, 1, 2), samples_per_class=100, extractor="dataset", extractor_steps=3000,
                      guidance_scales=(1.0, 2.0, 3.0), generators=("fsdd", "masked_sorted", "ar_sorted")),
        "paper": dict(seeds=(0,), samples_per_class=50, extractor="inception", guidance_scales=(1.0, 2.0, 3.0)),
    }

    def __post_init__(self) -> None:
        _check(self, _distinct(self.seeds), "seeds", "a non-empty list of distinct seeds")
        _check(self, _distinct(self.generators) and "fsdd" in self.generators, "generators",
               f"a list of distinct generators from {list(GENERATOR_NAMES)} that includes fsdd")
        _check(self, self.samples_per_class >= 1, "samples_per_class", "at least 1")
        _check(self, self.extractor_steps >= 1, "extractor_steps", "at least 1")
        _check(self, self.reference_samples == 0 or self.reference_samples >= 2, "reference_samples",
               "0 (all validation images) or at least 2")
        _check(self, len(self.guidance_scales) >= 1 and all(g >= 0 for g in self.guidance_scales),
               "guidance_scales", "at least one scale, each >= 0")
        _check(self, self.grid_per_class >= 1, "grid_per_class", "at least 1")

    def scoring(self, eval_cfg: EvalConfig) -> EvalConfig:
        """``eval_cfg`` with this section's extractor (and its training steps): what ``metrics.fid_options`` takes."""
        return eval_cfg.replace(extractor=self.extractor, dataset_extractor_steps=self.extractor_steps)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(Section):
    """Where every stage runs (``runtime`` in params.yaml): ``device`` is ``auto`` (cuda when torch sees a GPU, else
    cpu; ``tokenset.device.resolve_device``), or ``cpu``, ``cuda``, ``cuda:N``, ``mps``. The same ``dvc repro`` then
    uses a GPU where there is one, with no edit."""

    device: str = "auto"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __post_init__(self) -> None:
        _check(self, isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None, "device",
               "auto, cpu, cuda, cuda:N or mps")
