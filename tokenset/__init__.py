"""tokenset: Tokenize Image as a Set (set tokenizer, dual transformation, Fixed-Sum Discrete Diffusion)."""

from tokenset.bijection import canonical_order, counts_to_set, set_to_counts
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

__all__ = [
    "set_to_counts", "counts_to_set", "canonical_order",
    "DataConfig", "TokenizerConfig", "TrainConfig", "DenoiserConfig", "FSDDConfig", "EvalConfig",
    "SigmaSchedule", "NoiseKind", "load_params",
]
__version__ = "0.1.0"
