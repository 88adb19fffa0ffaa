"""Resolve a user's device choice ("auto", "cpu", "cuda", "cuda:1", ...) to a torch.device, and
say whether it runs bf16 natively."""

from __future__ import annotations

import platform

import torch

from batmann.errors import ConfigError
from crossbar.cpu_features import has_fast_bf16  # noqa: F401 (re-exported: one definition)


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


def describe_device(device: torch.device) -> str:
    """A one-line name of the hardware behind ``device``, for a checkpoint's provenance:
    ``"cuda: NVIDIA H100 80GB HBM3"`` or ``"cpu: AMD EPYC, AVX2, 2 threads"``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        model = ""
        try:
            with open("/proc/cpuinfo") as fh:
                model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
        except OSError:
            pass
        model = model or platform.processor() or platform.machine()
        return f"cpu: {model}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    return device.type
