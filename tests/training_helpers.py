"""One deterministic training pass of a controller, for the tests of its training kernels (not collected)."""

from __future__ import annotations

import torch

from batmann.utils.determinism import deterministic_kernels


def deterministic_pass(model: torch.nn.Module, x: torch.Tensor, autocast: bool
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(x)`` and the gradients of its sum, inside ``deterministic_kernels`` (under CPU bf16
    autocast if ``autocast``): the output and each parameter's gradient, by name."""
    model.zero_grad()
    with deterministic_kernels("cpu"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
        out.float().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
