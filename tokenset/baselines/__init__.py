"""Baseline generators over token SEQUENCES, to compare with FSDD over count vectors on the same tokens.

Both are sized by the FSDD network's own ``DenoiserConfig`` (width, depth, heads, mlp_ratio, class dropout,
number of classes; ``codebook_size`` = vocabulary C, ``total`` = sequence length M) and built from the same
adaLN-Zero ``DiTBlock`` (tokenset.denoiser), so a comparison at equal config is at equal width and depth.

- ``masked``: MaskGIT-style absorbing-state discrete diffusion (bidirectional; cosine masking; confidence-based
  parallel decoding) -- the paper's "discrete diffusion" baseline.
- ``autoregressive``: causal next-token transformer with a class-token prefix -- the paper's "AR" baseline.

Each module has ``training_loss(model, tokens, labels, generator=None) -> dict(loss=...)`` and ``sample(model,
labels, ..., generator=None) -> tokens (B, M) int64``.

``matching`` probes a tokenizer baseline instead: the matching-instability probe of the ablation's matching arms
(``decoder_input`` "hungarian" / "chamfer", whose slot generator and set losses live in ``tokenset.set_decoders``).
"""

from tokenset.baselines import autoregressive, masked, matching
from tokenset.baselines.autoregressive import ARTokenTransformer
from tokenset.baselines.masked import MaskedTokenTransformer

__all__ = ["masked", "autoregressive", "matching", "MaskedTokenTransformer", "ARTokenTransformer"]
