"""The dual transformation: token multiset <-> count vector (fixed sum M) <-> sorted integer sequence.

A set tokenizer maps an image to a multiset T = {t_1, ..., t_M} of codebook indices in [0, C). Paper, Sec. 2:

    forward:  x_j = #{i : t_i = j},  j = 0..C-1   ->  x in N^C, 0 <= x_j <= M, sum_j x_j = M
    inverse:  repeat each index j x_j times, in ascending j (the canonical "structured integer sequence")

so ``counts_to_set(set_to_counts(t)) == canonical_order(t)`` and ``set_to_counts(counts_to_set(x)) == x``.
Pure functions over batches, vectorised, on any device. Imports nothing else from tokenset.
"""

from __future__ import annotations

import torch

__all__ = ["set_to_counts", "counts_to_set", "canonical_order", "MAX_CODEBOOK", "MAX_TOKENS"]

MAX_CODEBOOK = 65536
MAX_TOKENS = 1024


def _check_integer_matrix(x: torch.Tensor, name: str, shape: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype (int64 expected), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape {shape} (2 dimensions), got shape {tuple(x.shape)}")


def set_to_counts(tokens: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Count vector of each row's token multiset.

    tokens: (B, M) integer in [0, C)  ->  counts: (B, C) int64, each row sums to M.
    Invariant under any permutation of a row (that is what makes it a set representation).
    """
    _check_integer_matrix(tokens, "tokens", "(B, M)")
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
        raise TypeError(f"codebook_size must be an int, got {type(codebook_size).__name__}")
    if not 1 <= codebook_size <= MAX_CODEBOOK:
        raise ValueError(f"codebook_size must be in [1, {MAX_CODEBOOK}], got {codebook_size}")
    batch, num_tokens = tokens.shape
    if num_tokens > MAX_TOKENS:
        raise ValueError(f"tokens has M={num_tokens} per row; at most {MAX_TOKENS} are supported")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= codebook_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"tokens must lie in [0, {codebook_size}) (codebook_size), found the value {bad}")
    tokens = tokens.long()
    counts = torch.zeros(batch, codebook_size, dtype=torch.int64, device=tokens.device)
    counts.scatter_add_(1, tokens, torch.ones_like(tokens))
    return counts


def counts_to_set(counts: torch.Tensor) -> torch.Tensor:
    """The canonical token sequence of each count vector: code j repeated x_j times, ascending.

    counts: (B, C) integer, non-negative, every row summing to the same M  ->  tokens: (B, M) int64,
    each row sorted ascending. Inverse of ``set_to_counts`` up to order.
    """
    _check_integer_matrix(counts, "counts", "(B, C)")
    batch, codebook_size = counts.shape
    if codebook_size == 0:
        raise ValueError("counts has an empty codebook (C = 0 columns); expected C >= 1")
    if codebook_size > MAX_CODEBOOK:
        raise ValueError(f"counts has C={codebook_size} columns; at most {MAX_CODEBOOK} are supported")
    counts = counts.long()
    if batch == 0:
        return torch.zeros(0, 0, dtype=torch.int64, device=counts.device)
    if bool((counts < 0).any()):
        row, col = (counts < 0).nonzero()[0].tolist()
        raise ValueError(f"counts must be non-negative; row {row}, code {col} is {int(counts[row, col])}")
    sums = counts.sum(dim=1)
    total = int(sums[0])
    if bool((sums != total).any()):
        raise ValueError(
            f"every row of counts must have the same sum M; found sums {sorted(set(sums.tolist()))[:8]}"
        )
    if total > MAX_TOKENS:
        raise ValueError(f"counts rows sum to M={total}; at most {MAX_TOKENS} tokens are supported")
    # Row b, output slot i holds the code j with cumsum[j-1] <= i < cumsum[j]: a sorted search per row.
    ends = counts.cumsum(dim=1)  # (B, C)
    slots = torch.arange(total, device=counts.device).expand(batch, total).contiguous()  # (B, M)
    return torch.searchsorted(ends, slots, right=True)  # (B, M) int64, ascending


def canonical_order(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens sorted ascending per row: the canonical order of a multiset. (B, M) -> (B, M) int64."""
    _check_integer_matrix(tokens, "tokens", "(B, M)")
    return tokens.long().sort(dim=1).values
