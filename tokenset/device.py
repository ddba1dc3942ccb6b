"""The device a stage runs on, from ``runtime.device`` (tokenset.config.RuntimeConfig): ``auto`` is cuda when torch
sees a GPU, else cpu. A ground module: it imports no other tokenset module."""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device"]


def resolve_device(spec: str = "auto") -> str:
    """``auto`` -> ``cuda`` if ``torch.cuda.is_available()`` else ``cpu``; ``cpu`` / ``mps`` / ``cuda`` /
    ``cuda:N`` are returned as given once checked to exist here (ValueError naming what is missing otherwise)."""
    if not isinstance(spec, str) or re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", spec) is None:
        raise ValueError(f"device: expected auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(spec.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(f"device: {spec!r} asked for, but torch sees {count} CUDA device(s) here; use "
                             "runtime.device: auto (cuda when there is a GPU, else cpu) or cpu")
    if spec == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device: 'mps' asked for, but torch sees no MPS device here; use auto or cpu")
    return spec
