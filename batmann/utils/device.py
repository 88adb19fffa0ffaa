"""Resolve a user's device choice ("auto", "cpu", "cuda", "cuda:1", ...) to a torch.device."""

from __future__ import annotations

import torch

from batmann.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Return a torch.device; "auto" picks CUDA when available, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for CUDA but torch sees no CUDA device; use --device cpu")
    return dev
