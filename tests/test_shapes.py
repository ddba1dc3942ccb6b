"""tokenset.data.shapes: the drawn-shape generalisation set is deterministic, grey and padded like Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch

from tokenset.data import drawn_shapes


def test_drawn_shapes_shape_grey_padding_and_determinism():
    x = drawn_shapes(20, size=32, seed=5)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated to 3 channels
    assert int(x[:, :, :2].max()) == 0 and int(x[:, :, -2:].max()) == 0  # the 2 px margin of 28 -> 32
    assert all(int(img.max()) >= 80 for img in x)  # every image holds at least one shape
    assert torch.equal(x, drawn_shapes(20, size=32, seed=5))
    assert not torch.equal(x, drawn_shapes(20, size=32, seed=6))


@pytest.mark.parametrize("kw, match", [(dict(n=0), "n: expected"), (dict(n=2, size=27), "size: expected"),
                                       (dict(n=2, size=31), "size: expected")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        drawn_shapes(**kw)
