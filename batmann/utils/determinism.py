"""Bit-reproducible training kernels: what seeding every generator does not cover.

Seeding (:mod:`batmann.utils.seeding`) fixes *what* is computed; on a CPU the order in which
torch's libraries sum partial results may still change from one call to the next, and with it
the last bits of every weight. Measured on a 2-core Xeon with AVX-512 (the resume tests of
``tests/test_train.py`` and a script that trains the same 6 episodes three times per process,
with and without another torch process busy on the machine):

- with torch's defaults (2 threads, oneDNN convolutions, MKL's dynamic threads) a run resumed
  in a new process, or the first run of a process, ended with other weights in 2 of 24 tries
  on an idle machine and 3 of 16 next to a busy torch process;
- with MKL's dynamic thread adjustment off (Intel's reproducibility condition) and oneDNN's
  ``deterministic`` attribute on, in 7 of 18 idle tries;
- with oneDNN off as well (torch's own im2col + GEMM convolution), in 0 of 16 idle tries but
  1 of 8 loaded;
- with **one thread**, in none of 34 tries (20 of them loaded): a single thread has no
  partial sums to reorder.

:func:`deterministic_kernels` therefore runs the block on one intra-op thread (and switches
MKL's dynamic threads off and oneDNN's deterministic attribute on, which cost nothing), and
restores everything after. The guarantee: the same run, resumed or not, gives the same bits
on the same CPU kind and torch build, whatever the load and the number of cores. The
project's own C kernels (:mod:`batmann.models.native`) sum every element in one fixed order
whatever the number of threads that run them, so inside the block they keep the threads torch
had (:func:`invariant_threads`), and so do torch's convolutions cut into fixed image ranges of
one thread each (:mod:`batmann.models.grouped_conv`). The price of torch's one thread: before the C kernels,
20-way 5-shot training ran 0.66 (fp, fp32), 3.63 (fp, bf16) and 0.51 (xnor) episodes/s
on 2 threads and 0.35, 1.84 and 0.28 on one (``benchmarks/bench_train.py --tasks 20w5s
--test-episodes 0``, AMX Xeon), about 1.9x slower.
Across CPU kinds (AVX-512 against AVX2) other kernels round differently. On CUDA, torch's
deterministic algorithms are asked for (warning where none exists); GPU runs are not
guaranteed bit-exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from typing import Iterator

import torch


def _mkl_dynamic_switch():
    """MKL's ``MKL_Set_Dynamic`` (C API; ``mkl_set_dynamic`` is the Fortran entry, by pointer)
    and its getter, from the torch library that links MKL statically; None where absent."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(lib_dir, "libtorch_cpu*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            setter, getter = lib.MKL_Set_Dynamic, lib.mkl_serv_get_dynamic
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], None
        getter.argtypes, getter.restype = [], ctypes.c_int
        return setter, getter
    return None


_MKL_DYNAMIC = _mkl_dynamic_switch() if torch.backends.mkl.is_available() else None


#: inside :func:`deterministic_kernels`, torch's intra-op thread count before it (else None)
_outer_threads: int | None = None


def in_deterministic_block() -> bool:
    """Whether the caller runs inside :func:`deterministic_kernels` (enabled)."""
    return _outer_threads is not None


def invariant_threads() -> int:
    """Threads for kernels whose results are the same bits on any number of threads (the native
    C kernels): torch's intra-op thread count, or inside :func:`deterministic_kernels` the count
    it had before the block set one (one thread fixes torch's own sums, which these do not need)."""
    return max(1, _outer_threads or torch.get_num_threads())


@contextlib.contextmanager
def every_core_for_exact_work() -> Iterator[None]:
    """Within the block torch has :func:`invariant_threads` intra-op threads (restored after): for
    torch work whose results are the same bits on any thread count (integer products with integer
    sums, copies, conversions), which inside :func:`deterministic_kernels` would run on one."""
    threads, want = torch.get_num_threads(), invariant_threads()
    if threads != want:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if threads != want:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def deterministic_kernels(device: torch.device | str = "cpu", enabled: bool = True) -> Iterator[None]:
    """Within the block: one intra-op thread, MKL without dynamic threads, oneDNN's (and on CUDA
    cuDNN's) deterministic algorithms; the previous settings are restored afterwards. The
    native kernels keep the previous thread count (:func:`invariant_threads`).
    ``enabled=False`` changes nothing."""
    global _outer_threads
    if not enabled:
        yield
        return
    device = torch.device(device)
    threads = torch.get_num_threads()
    outer = _outer_threads
    _outer_threads = invariant_threads()
    old_mkldnn = torch.backends.mkldnn.deterministic
    old_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    old_algos = (torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled())
    old_mkl = _MKL_DYNAMIC[1]() if _MKL_DYNAMIC is not None else None
    if _MKL_DYNAMIC is not None:
        _MKL_DYNAMIC[0](0)
    torch.set_num_threads(1)
    torch.backends.mkldnn.deterministic = True
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        _outer_threads = outer
        torch.backends.mkldnn.deterministic = old_mkldnn
        torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old_cudnn
            torch.use_deterministic_algorithms(old_algos[0], warn_only=old_algos[1])
        if _MKL_DYNAMIC is not None:
            _MKL_DYNAMIC[0](old_mkl)
