"""tokenset: Tokenize Image as a Set (set tokenizer, dual transformation, Fixed-Sum Discrete Diffusion).

The public API, by layer (lower layers import nothing above them):
- config: the typed configuration and presets; bijection: the dual transformation;
- data: data sets; quantizer, tokenizer: the set tokenizer; fsdd: the process; denoiser: its network;
- checkpoint, trainer, train: resumable training; generators, metrics, analysis, report: on top.
"""

from tokenset.bijection import canonical_order, counts_to_set, set_to_counts
from tokenset.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tokenset.config import (
    DataConfig,
    DenoiserConfig,
    EvalConfig,
    FSDDConfig,
    NoiseKind,
    SigmaSchedule,
    TokenizerConfig,
    TrainConfig,
    load_params,
)
from tokenset.denoiser import CountDiT
from tokenset.fsdd import FSDD, discretised_gaussian, fixed_sum_noise, greedy_adjust, round_fixed_sum
from tokenset.quantizer import CosineQuantizer
from tokenset.tokenizer import SetTokenizer

__all__ = [
    "set_to_counts", "counts_to_set", "canonical_order",
    "DataConfig", "TokenizerConfig", "TrainConfig", "DenoiserConfig", "FSDDConfig", "EvalConfig",
    "SigmaSchedule", "NoiseKind", "load_params",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
    "CosineQuantizer", "SetTokenizer", "CountDiT",
    "FSDD", "fixed_sum_noise", "round_fixed_sum", "discretised_gaussian", "greedy_adjust",
]
__version__ = "0.1.0"
