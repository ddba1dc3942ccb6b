"""Properties of the dual transformation (tokenset.bijection)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenset.bijection import canonical_order, counts_to_set, set_to_counts


@st.composite
def token_batches(draw, max_batch=6, max_tokens=40, max_codebook=70):
    batch = draw(st.integers(1, max_batch))
    num_tokens = draw(st.integers(1, max_tokens))
    codebook = draw(st.integers(1, max_codebook))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # Few distinct values as well as many, so that repeats are common.
    high = draw(st.integers(1, codebook))
    return torch.randint(0, high, (batch, num_tokens), generator=g), codebook


@settings(max_examples=150, deadline=None)
@given(token_batches())
def test_set_to_counts_sums_shapes_dtypes(data):
    tokens, codebook = data
    counts = set_to_counts(tokens, codebook)
    assert counts.shape == (tokens.shape[0], codebook)
    assert counts.dtype == torch.int64
    assert (counts >= 0).all()
    assert (counts.sum(1) == tokens.shape[1]).all()
    # Each count is the number of occurrences of that code in the row.
    for b in range(tokens.shape[0]):
        ref = torch.bincount(tokens[b], minlength=codebook)
        assert torch.equal(counts[b], ref)


@settings(max_examples=150, deadline=None)
@given(token_batches(), st.integers(0, 2**31 - 1))
def test_set_to_counts_is_permutation_invariant(data, seed):
    tokens, codebook = data
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(tokens.shape, generator=g), dim=1)
    shuffled = tokens.gather(1, perm)
    assert torch.equal(set_to_counts(shuffled, codebook), set_to_counts(tokens, codebook))


@settings(max_examples=150, deadline=None)
@given(token_batches())
def test_round_trip_tokens_counts_tokens(data):
    tokens, codebook = data
    back = counts_to_set(set_to_counts(tokens, codebook))
    assert back.dtype == torch.int64
    assert torch.equal(back, canonical_order(tokens))
    assert (back[:, 1:] >= back[:, :-1]).all()


@settings(max_examples=150, deadline=None)
@given(token_batches())
def test_round_trip_counts_tokens_counts(data):
    tokens, codebook = data
    counts = set_to_counts(tokens, codebook)
    assert torch.equal(set_to_counts(counts_to_set(counts), codebook), counts)


def test_known_example_with_repeats():
    tokens = torch.tensor([[3, 0, 3, 1, 3]])
    counts = set_to_counts(tokens, 5)
    assert counts.tolist() == [[1, 1, 0, 3, 0]]
    assert counts_to_set(counts).tolist() == [[0, 1, 3, 3, 3]]


@pytest.mark.parametrize("codebook,num_tokens", [(65536, 128), (4096, 1024), (1, 7)])
def test_extreme_sizes(codebook, num_tokens):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, codebook, (3, num_tokens), generator=g)
    counts = set_to_counts(tokens, codebook)
    assert torch.equal(counts_to_set(counts), canonical_order(tokens))


def test_int32_input_accepted_and_returns_int64():
    tokens = torch.tensor([[1, 0]], dtype=torch.int32)
    assert set_to_counts(tokens, 2).dtype == torch.int64
    assert counts_to_set(torch.tensor([[1, 1]], dtype=torch.int32)).dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    tokens = torch.randint(0, 4096, (8, 128), device="cuda")
    counts = set_to_counts(tokens, 4096)
    assert counts.device.type == "cuda"
    assert torch.equal(counts_to_set(counts), canonical_order(tokens))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: set_to_counts(torch.zeros(2, 3), 4), TypeError, "integer dtype"),
        (lambda: set_to_counts(torch.zeros(3, dtype=torch.long), 4), ValueError, "2 dimensions"),
        (lambda: set_to_counts(torch.tensor([[0, 4]]), 4), ValueError, r"\[0, 4\).*4"),
        (lambda: set_to_counts(torch.tensor([[0, -1]]), 4), ValueError, "-1"),
        (lambda: set_to_counts(torch.tensor([[0]]), 0), ValueError, "codebook_size"),
        (lambda: set_to_counts(torch.tensor([[0]]), 70000), ValueError, "65536"),
        (lambda: set_to_counts([[0]], 4), TypeError, "torch.Tensor"),
        (lambda: set_to_counts(torch.tensor([[0]]), 4.0), TypeError, "codebook_size"),
        (lambda: counts_to_set(torch.tensor([[1.0, 2.0]])), TypeError, "integer dtype"),
        (lambda: counts_to_set(torch.tensor([1, 2])), ValueError, "2 dimensions"),
        (lambda: counts_to_set(torch.tensor([[2, -1]])), ValueError, "non-negative"),
        (lambda: counts_to_set(torch.tensor([[1, 1], [2, 1]])), ValueError, "same sum"),
        (lambda: counts_to_set(torch.zeros(2, 0, dtype=torch.long)), ValueError, "empty codebook"),
        (lambda: counts_to_set(torch.tensor([[True, False]])), TypeError, "integer dtype"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
