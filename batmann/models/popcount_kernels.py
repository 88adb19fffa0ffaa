"""Exact +-1 x +-1 products by XOR and population count (AVX2 or AVX-512), for CPUs without AMX.

A +-1 value is one bit, so K products of +-1 activations with +-1 weights sum to
``K - 2 * popcount(a XOR w)``: an integer, exact, converted to float32 once. 128 channels of a
pixel are two 64-bit words, and a 5x5 patch of them 50 words, where fp32 needs 3200
multiply-adds. The kernels (``csrc/pm1_popcount.c``: bit packing, patch gathering and the
XOR/popcount product, tiles of 16 pixels against 8 output channels at a time) are compiled with
the system's C compiler (``$CC``, else ``cc``) on first use and kept in ``$BATMANN_HOME/kernels``, named by a
hash of the source and flags; they run on ``torch.get_num_threads()`` threads, each on its own
images. The counting loop runs on 512-bit blocks with VPOPCNTQ where the CPU has AVX-512
VPOPCNTDQ, else on 256-bit blocks with AVX2 (:func:`isa`, chosen at run time). Outputs are
bit-identical to the fp32 convolution whatever the threads and the loop
(``tests/test_popcount_kernels.py``). Where the CPU lacks AVX2 or no compiler builds the
library, :func:`available` is False and :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from batmann.models import native

CFLAGS = ("-O3", "-std=c11", "-mavx2", "-mpopcnt", "-fPIC", "-shared")

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _declare(lib: ctypes.CDLL) -> None:
    lib.pm1_pack.argtypes = [_P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P]
    lib.pm1_pack.restype = None
    lib.pm1_pack_above.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P]
    lib.pm1_pack_above.restype = None
    lib.pm1_conv.argtypes = [_P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I64, _I64, _I64, _P, _I64, _I64, _I64,
                             _P, ctypes.c_int, ctypes.c_int]
    lib.pm1_conv.restype = ctypes.c_int
    lib.pm1_isa.argtypes = [ctypes.c_int]
    lib.pm1_isa.restype = ctypes.c_int
    lib.pm1_isa(0)  # settled once here, before any kernel runs on the pool's threads


LIBRARY = native.NativeLibrary("pm1_popcount.c", CFLAGS, _declare,
                               lambda: None if native.has_avx2() else "the CPU has no AVX2")


def _load() -> ctypes.CDLL | None:
    return LIBRARY.load()


def available() -> bool:
    """Whether the kernels run here (an AVX2 CPU, the library built or buildable)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (one line), or None."""
    _load()
    return LIBRARY.reason


#: the counting loops by block width in bits: what :func:`isa` returns, and its name for ``--verbose``
ISAS = {256: "AVX2", 512: "AVX-512 VPOPCNTDQ"}


def isa() -> int:
    """The counting loop's block width in use (a key of :data:`ISAS`): 512 where the CPU has
    AVX-512 VPOPCNTDQ, else 256. Needs :func:`available`."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"popcount kernels unavailable: {LIBRARY.reason}")
    return int(lib.pm1_isa(0))


@contextlib.contextmanager
def using_isa(bits: int) -> Iterator[int]:
    """Run the kernels with the ``bits``-wide counting loop (256 or 512) inside the block, where
    this CPU has it (for tests and benchmarks; not thread-safe against kernels already running).
    Yields the width in use; the previous one is restored after."""
    if bits not in ISAS:
        raise ValueError(f"isa {bits} is not one of {', '.join(map(str, ISAS))}")
    before = isa()
    lib = _load()
    try:
        yield int(lib.pm1_isa(bits))
    finally:
        lib.pm1_isa(before)


def _pm1_int8(x: Tensor) -> Tensor:
    return x if x.dtype == torch.int8 else x.to(torch.int8)


@dataclass(frozen=True)
class PackedWeights:
    """+-1 weights (O, C, k, k) as bits, ready for :func:`pm1_conv2d` (pack once, use many times)."""

    bits: Tensor  #: (O rounded up to a multiple of 8, kwp) int64, (kh, kw, word) order, zero-padded
    out_channels: int
    in_channels: int
    kernel_size: int

    @property
    def words(self) -> int:
        """Words per row (kwp): k * k * ceil(C / 64), rounded up to a multiple of 4 (256 bits)."""
        return self.bits.shape[1]


def pack_weights(w: Tensor) -> PackedWeights:
    """+-1 weights (O, C, k, k) (or (N, K) of a linear layer) -> :class:`PackedWeights`."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"popcount kernels unavailable: {LIBRARY.reason}")
    if w.dim() == 2:
        w = w.reshape(*w.shape, 1, 1)
    o, c, k, _ = w.shape
    wi = _pm1_int8(w).contiguous()
    cw = (c + 63) // 64
    kwp = (k * k * cw + 3) // 4 * 4
    packed = torch.zeros((o + 7) // 8 * 8, kwp, dtype=torch.int64)
    bits = torch.empty(o, k * k, cw, dtype=torch.int64)
    lib.pm1_pack(wi.data_ptr(), o, k * k, c, c * k * k, 1, k * k, cw, bits.data_ptr())
    packed[:o, :k * k * cw] = bits.view(o, -1)
    return PackedWeights(packed, o, c, k)


def _epilogue_scale(scale: Tensor | None, out_channels: int) -> Tensor | None:
    if scale is None:
        return None
    if scale.numel() == 1:
        scale = scale.reshape(1).expand(out_channels)
    if scale.numel() != out_channels:
        raise ValueError(f"scale has {scale.numel()} elements, expected one per output channel ({out_channels})")
    return scale.detach().reshape(-1).to("cpu", torch.float32).contiguous()


def _run(x: Tensor, pw: PackedWeights, stride: int, out: Tensor, threshold: Tensor | None,
         scale: Tensor | None = None, relu: bool = False, pool: bool = False) -> Tensor:
    """Pack ``x`` (B, C, H, W) and write the +-1 convolution with ``pw`` into ``out`` (times
    ``scale`` per output channel, then ReLU, then the 2x2 max pool, if asked)."""
    lib = _load()
    b, c, h, wd = x.shape
    o, k, kwp, wb = pw.out_channels, pw.kernel_size, pw.words, pw.bits
    cw = (c + 63) // 64
    if threshold is None:
        xi = _pm1_int8(x)
    else:
        xi = x
        thr = threshold.reshape(b).to(torch.float32).contiguous()
    if xi.stride(2) != wd * xi.stride(3):  # pixels must form one stride
        xi = xi.contiguous()
    packed = torch.empty(b, h, wd, cw, dtype=torch.int64)
    sob, soc, sop = out.stride(0), out.stride(1), out.stride(3)
    xsize, osize = xi.element_size(), out.element_size()
    scale = _epilogue_scale(scale, o)
    sp = None if scale is None else scale.data_ptr()

    def chunk(lo: int, hi: int) -> int:
        src, dst = xi.data_ptr() + lo * xi.stride(0) * xsize, packed.data_ptr() + lo * h * wd * cw * 8
        if threshold is None:
            lib.pm1_pack(src, hi - lo, h * wd, c, xi.stride(0), xi.stride(3), xi.stride(1), cw, dst)
        else:
            lib.pm1_pack_above(src, thr.data_ptr() + lo * 4, hi - lo, h * wd, c, xi.stride(0), xi.stride(3),
                               xi.stride(1), cw, dst)
        return lib.pm1_conv(dst, hi - lo, h, wd, cw, k, stride, wb.data_ptr(), o, kwp, c * k * k,
                            out.data_ptr() + lo * sob * osize, sob, soc, sop, sp, int(relu), int(pool))

    if any(native.parallel(chunk, b)):
        raise MemoryError("the popcount kernels could not allocate their patch buffer")
    return out


def pm1_conv2d(x: Tensor, w: Tensor | PackedWeights, stride: int = 1, threshold: Tensor | None = None,
               scale: Tensor | None = None, relu: bool = False, pool: bool = False) -> Tensor:
    """``F.conv2d(x, w, stride=stride)`` for CPU tensors ``x`` (B, C, H, W) and ``w`` (O, C, k, k)
    whose entries are all +-1 (int8 or float; or packed by :func:`pack_weights`), no padding:
    float32 (B, O, H', W') in ``x``'s memory format, bit-identical to fp32. Square kernels, equal
    strides; needs :func:`available`. ``threshold`` (B elements, float32): ``x`` is real (float32)
    and stands for +1 where it is above its image's threshold, -1 elsewhere (the centered sign,
    packed in one pass). ``scale`` (O elements) and ``relu``: the output times ``scale`` per
    channel, then ``relu``, in the same pass, the same bits as ``torch.relu(out * scale.view(1, -1,
    1, 1))``. ``pool`` (with ``relu``, even output sizes): then the 2x2, stride-2 max pool, in the
    same pass (B, O, H' / 2, W' / 2)."""
    if _load() is None:
        raise RuntimeError(f"popcount kernels unavailable: {LIBRARY.reason}")
    if threshold is not None and x.dtype != torch.float32:
        raise TypeError(f"a thresholded input must be float32, got {x.dtype}")
    pw = w if isinstance(w, PackedWeights) else pack_weights(w)
    if pw.in_channels != x.shape[1]:
        raise ValueError(f"weights for {pw.in_channels} input channels, input has {x.shape[1]}")
    b, _, h, wd = x.shape
    o, k = pw.out_channels, pw.kernel_size
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    if pool and (not relu or ho % 2 or wo % 2):
        raise ValueError(f"a pooled output needs relu and even output sizes, got relu={relu}, {ho}x{wo}")
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if pool:
        out = torch.empty(b, o, ho // 2, wo // 2, dtype=torch.float32, memory_format=fmt).zero_()
    else:
        out = torch.empty(b, o, ho, wo, dtype=torch.float32, memory_format=fmt)
    if b == 0 or o == 0:
        return out
    return _run(x, pw, stride, out, threshold, scale, relu, pool)


def pm1_linear(x: Tensor, w: Tensor | PackedWeights, threshold: Tensor | None = None,
               scale: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.linear(x, w)`` for +-1 entries ``x`` (B, K) and ``w`` (N, K) (or packed by
    :func:`pack_weights`): float32 (B, N), exact; ``threshold``, ``scale`` and ``relu`` as in
    :func:`pm1_conv2d`."""
    b, kdim = x.shape
    pw = w if isinstance(w, PackedWeights) else pack_weights(w)
    if b == 0 or pw.out_channels == 0:
        return torch.empty(b, pw.out_channels, dtype=torch.float32)
    return pm1_conv2d(x.reshape(b, kdim, 1, 1), pw, threshold=threshold, scale=scale, relu=relu).view(b, -1)
