"""Sign functions, straight-through estimators (STE) and the 8-bit weight quantiser.

All binarisers here are *strictly two-level*: ``x > 0 -> +1`` and ``x <= 0 -> -1``
(:func:`sign_pm1`). The seed uses ``torch.sign``, which maps an exact 0 to 0 (a third level);
a crossbar needs two conductance states, and an exact 0 only occurs with probability zero
for the standardised tensors that are binarised, so the results match the seed otherwise.

Straight-through estimators (forward: :func:`sign_pm1`; backward as in the seed):

==========================  =================================================================
``XnorWeightSign``          seed ``XNOR_BinaryQuantize``: the incoming gradient clamped to
                            [-1, 1] (``grad.clamp(-1, 1)``), whatever the input.
``XnorActSign``             seed ``XNOR_BinaryQuantize_a``: identity where ``|x| < 1``, zero
                            where ``|x| >= 1`` (the hardtanh STE).
``RbnnSign``                seed RBNN ``BinaryQuantize``: ``grad * max(0, k (2 sqrt(t^2/2) -
                            |t^2 x|))`` with the schedule values ``k`` and ``t``. For
                            activations (``a32=False``) the seed calls it with ``k = 1`` and
                            ``t = max(t, 1)`` (``BinaryQuantize_a``): see :func:`rbnn_act_sign`.
==========================  =================================================================

8-bit weights (seed ``first_conv`` / ``last_fc``): ``q = round(w / s * 127) / 127 * s`` with a
straight-through gradient (identity). The seed takes ``s = max(w)`` (signed maximum), so
negative weights with ``|w| > max(w)`` land beyond level -127 (more than 8 bits). We default to
``s = max|w|`` (``scale_mode="absmax"``): the levels are integers in [-127, 127], i.e. truly
8-bit; ``scale_mode="max"`` reproduces the seed exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from batmann.errors import ConfigError

INT8_SCALE_MODES = ("absmax", "max")
INT8_LEVELS = 127


def sign_pm1(x: Tensor) -> Tensor:
    """Two-level sign: +1 where ``x > 0``, -1 elsewhere (same dtype and device as ``x``)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x > 0, one, -one)


class XnorWeightSign(torch.autograd.Function):
    """Forward :func:`sign_pm1`; backward ``grad.clamp(-1, 1)`` (seed ``XNOR_BinaryQuantize``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad.clamp(-1.0, 1.0)


class XnorActSign(torch.autograd.Function):
    """Forward :func:`sign_pm1`; backward passes the gradient where ``|x| < 1`` only."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 1).to(grad.dtype)


class RbnnSign(torch.autograd.Function):
    """Forward :func:`sign_pm1`; backward ``grad * clamp(k (2 sqrt(t^2/2) - |t^2 x|), min=0)``.

    ``k`` and ``t`` are Python floats (the RBNN training schedule, see
    :func:`rbnn_schedule`); they receive no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, k: float, t: float) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.k = float(k)
        ctx.t = float(t)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        k, t = ctx.k, ctx.t
        surrogate = (k * (2.0 * math.sqrt(t * t / 2.0) - (t * t) * x.abs())).clamp(min=0)
        return grad * surrogate.to(grad.dtype), None, None


def xnor_weight_sign(w: Tensor) -> Tensor:
    """Binarise XNOR weights with the seed's weight STE."""
    return XnorWeightSign.apply(w)


def xnor_act_sign(x: Tensor) -> Tensor:
    """Binarise XNOR activations with the hardtanh STE."""
    return XnorActSign.apply(x)


def rbnn_weight_sign(w: Tensor, k: float, t: float) -> Tensor:
    """Binarise RBNN weights with the RBNN surrogate gradient at schedule ``(k, t)``."""
    return RbnnSign.apply(w, k, t)


def rbnn_act_sign(x: Tensor, t: float) -> Tensor:
    """Binarise RBNN activations (``a32=False``): the seed uses ``k = 1, t = max(t, 1)``."""
    return RbnnSign.apply(x, 1.0, max(float(t), 1.0))


def rbnn_schedule(episode: int, total_episodes: int, t_min: float = 1e-2, t_max: float = 10.0) -> tuple[float, float]:
    """The seed's ``cpt_tk``: ``t = 10^(log10 t_min + (log10 t_max - log10 t_min) * e / E)``, ``k = max(1/t, 1)``.

    Returns ``(k, t)``. At construction the layers hold the seed's defaults ``k = 10, t = 0.1``.
    """
    if total_episodes <= 0:
        raise ConfigError(f"total_episodes must be positive, got {total_episodes}")
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10.0 ** (lo + (hi - lo) / total_episodes * episode)
    k = max(1.0 / t, 1.0)
    return k, t


def int8_scale(w: Tensor, scale_mode: str = "absmax") -> Tensor:
    """The 8-bit scale ``s`` (a 0-d tensor, detached): ``max|w|`` or the seed's ``max(w)``."""
    if scale_mode == "absmax":
        s = w.detach().abs().max()
    elif scale_mode == "max":
        s = w.detach().max()
    else:
        raise ConfigError(f"int8 scale mode {scale_mode!r} is not one of {', '.join(INT8_SCALE_MODES)}")
    # an all-zero (or, for "max", all-non-positive) tensor would divide by zero
    return torch.where(s > 0, s, torch.ones_like(s))


def int8_levels(w: Tensor, scale_mode: str = "absmax") -> tuple[Tensor, Tensor]:
    """Integer levels and scale: ``w ~ levels / 127 * scale``. ``levels`` is float, integer-valued."""
    s = int8_scale(w, scale_mode)
    return torch.round(w.detach() / s * INT8_LEVELS), s


def int8_dequantize(w: Tensor, scale_mode: str = "absmax") -> Tensor:
    """The dequantised 8-bit weights ``round(w / s * 127) / 127 * s`` (no gradient)."""
    levels, s = int8_levels(w, scale_mode)
    return levels / INT8_LEVELS * s


class _IdentitySTE(torch.autograd.Function):
    """Return ``q`` exactly in the forward pass; pass the gradient to ``w`` unchanged."""

    @staticmethod
    def forward(ctx, w: Tensor, q: Tensor) -> Tensor:  # noqa: D102
        return q.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad, None


def int8_quantize_ste(w: Tensor, scale_mode: str = "absmax") -> Tensor:
    """8-bit weights in the forward pass, identity gradient in the backward pass.

    Same as the seed's ``(q - w).detach() + w`` but returns ``q`` bit-exactly, so the exported
    plain layer (whose weights are :func:`int8_dequantize`) matches the training forward.
    """
    return _IdentitySTE.apply(w, int8_dequantize(w, scale_mode))
