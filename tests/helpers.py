"""Helpers shared by test modules."""

import torch


def randomized(model, seed=0, std=0.2):
    """The model with every parameter redrawn, so that (unlike a zero-initialised read-out) outputs depend on
    every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
