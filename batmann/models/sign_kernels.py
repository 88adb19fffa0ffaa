"""The centered sign of activations and its straight-through gradient in C (AVX2), on every core;
the standardisation (``(x - mean) / std`` per sample) and its gradient likewise.

The training form of :func:`batmann.models.fused.sign_forward` / ``sign_backward`` for float32
tensors on the CPU (``csrc/centered_sign.c``): each sample's mean, standard deviation and
gradient sums in one fixed order (double accumulators), each sample on one thread, so the bits
are the same on any number of threads, inside ``deterministic_kernels`` too (where torch, and
TorchInductor's kernels, run on one thread). Each sample is read twice per call, and the ReLU
before the sign (``relu=True``) is computed on the fly. The values are the eager formulas' to
float32 rounding (the sums run in another order, and in double).
Built like the other kernels (:mod:`batmann.models.native`); where it does not build,
:func:`available` is False and the compiled or eager forms run.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from batmann.models import native

CFLAGS = ("-O3", "-std=c11", "-mavx2", "-fno-math-errno", "-fPIC", "-shared")

#: the clamp of the standard deviation (:data:`batmann.models.fused.STD_EPS`)
STD_EPS = 1e-12

#: surrogate derivatives of the sign by name, as the kernels number them
SURROGATES = {"hardtanh": 0, "rbnn": 1}
#: the kernels' surrogate 2: the identity, for the standardisation's own gradient
IDENTITY = "identity"

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _declare(lib: ctypes.CDLL) -> None:
    lib.sign_forward.argtypes = [_P, _I64, _I64, _I64, ctypes.c_int, ctypes.c_float, _P, _P, _P, ctypes.c_int]
    lib.sign_forward.restype = None
    lib.sign_backward.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, ctypes.c_int, ctypes.c_int, ctypes.c_float, _P]
    lib.sign_backward.restype = None


LIBRARY = native.NativeLibrary("centered_sign.c", CFLAGS, _declare,
                               lambda: None if native.has_avx2() else "the CPU has no AVX2")


def available() -> bool:
    """Whether the kernels run here (an AVX2 CPU, the library built or buildable)."""
    return LIBRARY.load() is not None


def applies(x: Tensor, *others: Tensor) -> bool:
    """Whether the kernels take ``x`` (B, ...) and ``others`` (its output gradient): CPU float32,
    at least one element per sample, and the library here."""
    return (x.device.type == "cpu" and x.dim() >= 2 and x.dtype == torch.float32 and x[0].numel() > 0
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in others) and available())


def _rows(x: Tensor) -> tuple[Tensor, int, int]:
    x = x.detach().contiguous()
    return x, x.shape[0], x[0].numel()


def _stat_shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def sign_forward(x: Tensor, relu: bool = False, standardize: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(sign_pm1(r - mu), mu, s)`` of ``r = relu(x)`` (``relu``) or ``x``, per sample: +-1
    float32 of ``x``'s shape, the float32 mean and unbiased standard deviation (clamped below at
    :data:`STD_EPS`), each (B, 1, ...). ``standardize``: ``(r - mu) / s`` in place of the sign."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"centered-sign kernels unavailable: {LIBRARY.reason}")
    xc, b, n = _rows(x)
    out = torch.empty(x.shape, dtype=torch.float32)
    mu = torch.empty(_stat_shape(x), dtype=torch.float32)
    s = torch.empty(_stat_shape(x), dtype=torch.float32)
    native.parallel(lambda lo, hi: lib.sign_forward(xc.data_ptr(), lo, hi, n, int(relu), STD_EPS, out.data_ptr(),
                                                    mu.data_ptr(), s.data_ptr(), int(standardize)), b)
    return out, mu, s


def sign_backward(x: Tensor, mu: Tensor, s: Tensor, g: Tensor, surrogate: str = "hardtanh", t: float = 1.0,
                  relu: bool = False) -> Tensor:
    """The gradient at ``x`` (float32, ``x``'s shape) of the centered sign of :func:`sign_forward`
    given ``g`` at its output: ``g`` times the ``surrogate`` derivative at ``x_hat = (r - mu) /
    s`` (``"hardtanh"``: ``|x_hat| < 1``; ``"rbnn"``: ``max(0, sqrt(2) t - t^2 |x_hat|)``), the
    exact gradient of the standardisation, and with ``relu`` the ReLU's mask ``x > 0``."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"centered-sign kernels unavailable: {LIBRARY.reason}")
    if surrogate not in SURROGATES and surrogate != IDENTITY:
        raise ValueError(f"surrogate {surrogate!r} is not one of {', '.join(SURROGATES)}")
    if g.shape != x.shape:
        raise ValueError(f"the output gradient must have x's shape {tuple(x.shape)}, got {tuple(g.shape)}")
    xc, b, n = _rows(x)
    gc = g.detach().contiguous()
    m, sd = mu.detach().to(torch.float32).contiguous(), s.detach().to(torch.float32).contiguous()
    if m.numel() != b or sd.numel() != b:
        raise ValueError(f"mu and s need one value per sample ({b}), got {m.numel()} and {sd.numel()}")
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"the surrogate's t must be finite, got {t}")
    gx = torch.empty(x.shape, dtype=torch.float32)
    native.parallel(lambda lo, hi: lib.sign_backward(xc.data_ptr(), m.data_ptr(), sd.data_ptr(), gc.data_ptr(), lo, hi,
                                                     n, int(relu), SURROGATES.get(surrogate, 2), t, gx.data_ptr()), b)
    return gx


def standardize_forward(x: Tensor, relu: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``((r - mu) / s, mu, s)`` per sample of ``r = relu(x)`` (``relu``) or ``x`` (see
    :func:`sign_forward`): float32 of ``x``'s shape, the mean and unbiased standard deviation
    each (B, 1, ...)."""
    return sign_forward(x, relu, standardize=True)


def standardize_backward(x: Tensor, mu: Tensor, s: Tensor, g: Tensor, relu: bool = False) -> Tensor:
    """The exact gradient at ``x`` of :func:`standardize_forward` given ``g`` at its output:
    ``(g - mean(g) - x_hat * sum(g x_hat) / (N - 1)) / s`` per sample, with ``relu`` times the
    ReLU's mask ``x > 0``."""
    return sign_backward(x, mu, s, g, IDENTITY, 1.0, relu)
