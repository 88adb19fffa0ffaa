"""Element-wise kernels of the binarized layers' training path: eager, or fused by ``torch.compile``.

The centered sign of an activation map (``sign(x - mean)`` per sample, straight-through
gradient through the standardised ``(x - mean) / std``) and the standardisation of RBNN inputs
read and write the largest tensors of a training step several times each in eager PyTorch (a
mean, a difference, a norm, a comparison, a cast, ... one pass each). Compiled by TorchInductor
(C++ with OpenMP and the CPU's vector units; a C++ compiler is needed), each becomes one
reduction pass and one element-wise pass.

Both forms compute the same formulas; the compiled reductions sum in another order, so the
results agree to float32 rounding, not bit for bit. TorchInductor picks its loops for the
thread count it compiles for, so the compiled kernels may sum in another order on another
number of threads (at 7 or 20 samples of 128 x 28 x 28 they do; at 16 samples of 8 x 24 x 24,
``tests/test_fused.py``, they do not); inside ``deterministic_kernels`` they run on torch's one
thread. A float32 centered sign runs instead on C kernels where they build
(:mod:`batmann.models.sign_kernels`: every core, the same bits on any number of threads).
:func:`compiled_kernels` switches the compiled form on for a block (training does, see
``TrainConfig.compile``); eager is the default everywhere else, and inference (no autograd: the
validation and test inside a training run) stays eager within the block too: the compiled
kernels have static shapes, one compilation per batch size, and an evaluation with the feature
cache meets dozens of batch sizes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
from typing import Callable, Iterator

import torch
from torch import Tensor

#: below this many elements per call the eager form is used even when compiled kernels are on
#: (small tensors: the FC input, unit tests), so that no compile is paid where nothing is gained
MIN_COMPILED_NUMEL = 1 << 16

STD_EPS = 1e-12

_enabled = False


def _dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


def _denominator(x: Tensor) -> int:
    return max(x[0].numel() - 1, 1)


def center_scale(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(c, mu, s)``: ``c = x - mean`` (float32), ``s`` the unbiased std (clamped below)."""
    dims = _dims(x)
    mu = x.mean(dims, keepdim=True, dtype=torch.float32)
    c = x - mu  # promotes a bf16 x to float32
    s = (torch.linalg.vector_norm(c, 2, dims, keepdim=True) / math.sqrt(_denominator(x))).clamp_min(STD_EPS)
    return c, mu, s


def _sign_forward(x: Tensor, out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    c, mu, s = center_scale(x)
    one = torch.ones((), dtype=out_dtype, device=x.device)
    return torch.where(c > 0, one, -one), mu, s


def _standardize_forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c, mu, s = center_scale(x)
    return c / s, mu, s


def _standardize_backward(x: Tensor, mu: Tensor, s: Tensor, gh: Tensor) -> Tensor:
    """The exact gradient of ``(x - mean) / std`` given ``gh``, the gradient at its output."""
    dims = _dims(x)
    xh = (x - mu) / s
    proj = (gh * xh).sum(dims, keepdim=True) / _denominator(x)
    return ((gh - gh.mean(dims, keepdim=True) - xh * proj) / s).to(x.dtype)


def _sign_backward_hardtanh(x: Tensor, mu: Tensor, s: Tensor, g: Tensor) -> Tensor:
    xh = (x - mu) / s
    return _standardize_backward(x, mu, s, torch.where(xh.abs() < 1, g.float(), 0.0))


def _sign_backward_rbnn(x: Tensor, mu: Tensor, s: Tensor, g: Tensor, t: Tensor) -> Tensor:
    xh = (x - mu) / s
    gh = g.float() * (math.sqrt(2.0) * t - (t * t) * xh.abs()).clamp_min(0.0)
    return _standardize_backward(x, mu, s, gh)


def _standardize_grad(x: Tensor, mu: Tensor, s: Tensor, g: Tensor) -> Tensor:
    return _standardize_backward(x, mu, s, g.float())


# The same of relu(y), from the ReLU's input y: the ReLU computed on the fly and its gradient mask
# applied in the same pass, so that neither relu(y) nor its gradient is stored.

def _sign_forward_relu(y: Tensor, out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return _sign_forward(torch.relu(y), out_dtype)


def _sign_backward_hardtanh_relu(y: Tensor, mu: Tensor, s: Tensor, g: Tensor) -> Tensor:
    return torch.where(y > 0, _sign_backward_hardtanh(torch.relu(y), mu, s, g), 0.0)


def _sign_backward_rbnn_relu(y: Tensor, mu: Tensor, s: Tensor, g: Tensor, t: Tensor) -> Tensor:
    return torch.where(y > 0, _sign_backward_rbnn(torch.relu(y), mu, s, g, t), 0.0)


_EAGER: dict[str, Callable] = {
    "sign_forward": _sign_forward,
    "sign_backward_hardtanh": _sign_backward_hardtanh,
    "sign_backward_rbnn": _sign_backward_rbnn,
    "sign_forward_relu": _sign_forward_relu,
    "sign_backward_hardtanh_relu": _sign_backward_hardtanh_relu,
    "sign_backward_rbnn_relu": _sign_backward_rbnn_relu,
    "standardize_forward": _standardize_forward,
    "standardize_backward": _standardize_grad,
}


#: static-shape compilations kept per kernel (one per shape, dtype and thread count met; a
#: training run meets a handful, a benchmark over several settings a few dozen)
RECOMPILE_LIMIT = 64


@functools.cache
def _compiled(name: str) -> Callable:
    """The compiled form of one kernel: static shapes (``dynamic=False``), so the code that runs
    for a shape never depends on which shapes came before it."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(_EAGER[name], dynamic=False, fullgraph=True)


def compiler_available() -> bool:
    """Whether TorchInductor can build CPU kernels here (a C++ compiler on the PATH)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _kernel(name: str, x: Tensor) -> Callable:
    if _enabled and x.device.type == "cpu" and x.numel() >= MIN_COMPILED_NUMEL:
        return _compiled(name)
    return _EAGER[name]


@contextlib.contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Within the block, the functions below run their compiled form (CPU tensors of at least
    :data:`MIN_COMPILED_NUMEL` elements); ``enabled=False`` keeps them eager."""
    global _enabled
    before = _enabled
    _enabled = bool(enabled)
    try:
        yield
    finally:
        _enabled = before


def _native(x: Tensor, *others: Tensor) -> bool:
    """Whether the centered sign of ``x`` runs on the C kernels (:mod:`batmann.models.sign_kernels`):
    where the compiled form would, for float32 tensors, the library here."""
    from batmann.models import sign_kernels

    return _enabled and x.device.type == "cpu" and x.numel() >= MIN_COMPILED_NUMEL and sign_kernels.applies(x, *others)


def sign_forward(x: Tensor, out_dtype: torch.dtype | None = None, compiled: bool = True,
                 relu: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(sign_pm1(x - mu), mu, s)`` per sample: +-1 in ``out_dtype`` (default ``x``'s), the
    float32 mean and unbiased std. ``compiled=False``: eager whatever the setting (inference).
    ``relu``: the same of ``torch.relu(x)``, the ReLU computed on the fly (not stored). Where the
    compiled form would run, a float32 sign runs on the C kernels instead (every core, the same
    bits on any number of threads)."""
    out_dtype = out_dtype or x.dtype
    if compiled and out_dtype == torch.float32 and _native(x):
        from batmann.models import sign_kernels

        return sign_kernels.sign_forward(x, relu)
    name = "sign_forward_relu" if relu else "sign_forward"
    return (_kernel(name, x) if compiled else _EAGER[name])(x, out_dtype)


def sign_backward(x: Tensor, mu: Tensor, s: Tensor, g: Tensor, surrogate: str, t: float,
                  relu: bool = False, native: bool | None = None) -> Tensor:
    """Gradient of the centered sign at ``x`` given ``g`` at its output: ``g`` times the surrogate
    derivative at ``x_hat = (x - mu) / s`` (``"hardtanh"``: ``|x_hat| < 1``; ``"rbnn"``:
    ``max(0, sqrt(2) t - t^2 |x_hat|)``), then the exact gradient of the standardisation.
    ``relu``: that of the centered sign of ``torch.relu(x)``, with respect to ``x`` (the ReLU's
    gradient mask ``x > 0`` applied in the same pass). Float32 on the C kernels with ``native``
    (the forward's choice; None: where :func:`sign_forward` would run there now)."""
    if native if native is not None else _native(x, g):
        from batmann.models import sign_kernels

        return sign_kernels.sign_backward(x, mu, s, g.float(), surrogate, t, relu)
    tail = "_relu" if relu else ""
    if surrogate == "hardtanh":
        return _kernel("sign_backward_hardtanh" + tail, x)(x, mu, s, g)
    t_ = torch.tensor(float(t), dtype=torch.float32, device=x.device)  # a tensor: no recompile per t
    return _kernel("sign_backward_rbnn" + tail, x)(x, mu, s, g, t_)


def on_native_kernels(x: Tensor) -> bool:
    """Whether a training sign or standardisation of ``x`` runs on the C kernels (see
    :func:`sign_forward`): inside :func:`compiled_kernels`, a large float32 CPU tensor, the library
    here. Only there does :func:`standardize_forward` take ``relu``."""
    return _native(x)


def standardize_forward(x: Tensor, compiled: bool = True, relu: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``((x - mu) / s, mu, s)`` per sample, float32; ``compiled=False`` as in :func:`sign_forward`.
    Where the compiled form would run, a float32 ``x`` runs on the C kernels instead, as the sign;
    there ``relu`` standardises ``torch.relu(x)`` (computed on the fly), elsewhere it is refused."""
    if compiled and _native(x):
        from batmann.models import sign_kernels

        return sign_kernels.standardize_forward(x, relu)
    if relu:
        raise ValueError("standardize_forward's relu runs on the C kernels only (see on_native_kernels)")
    return (_kernel("standardize_forward", x) if compiled else _EAGER["standardize_forward"])(x)


def standardize_backward(x: Tensor, mu: Tensor, s: Tensor, g: Tensor, relu: bool = False,
                         native: bool | None = None) -> Tensor:
    """Exact gradient of :func:`standardize_forward` at ``x`` given ``g`` at its output: on the C
    kernels with ``native`` (the forward's choice; None: where :func:`standardize_forward` would
    run there now), and always with ``relu``, which only they take."""
    if relu or (native if native is not None else _native(x, g)):
        from batmann.models import sign_kernels

        return sign_kernels.standardize_backward(x, mu, s, g.float(), relu)
    return _kernel("standardize_backward", x)(x, mu, s, g)
