"""Keep freed tensor memory in the process, so that large tensors do not fault their pages in anew.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc hands blocks above its mmap
threshold (128 KB, raised as large blocks are freed, never above 32 MB) straight back to the
kernel when they are freed, and trims the top of the heap beyond twice that threshold. Each new
tensor of a few MB or more then costs one page fault per 4 KB page it touches, about 2 us
each on a 2-core EPYC: an XNOR training step faulted about 618,000 pages (2.4 GB), a controller
forward pass of 200 images about 75,000 on crossbars and 41,000 digitally
(``benchmarks/bench_allocator.py``, docs/performance.md).

:func:`retain_freed_memory` tells glibc (``mallopt``) to take every block from the heap (no
mmapped blocks) and to trim the heap's top only beyond 1 GB, so freed blocks are reused. The
cost is peak memory: up to 40 % more for a training step (fragmentation), 4-6 % at inference
(``benchmarks/bench_allocator.py``). The command line calls it at start-up (and so do study
workers); it does nothing where the C library is not glibc, and nothing when
``BATMANN_RETAIN_MEMORY=0`` or the user set glibc's own ``MALLOC_*_`` or ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX), in case mmap
#: is used after all; the heap's top is trimmed beyond TRIM_THRESHOLD bytes
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

ENV = "BATMANN_RETAIN_MEMORY"

_applied: bool | None = None


def _user_tuned() -> bool:
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ


def retain_freed_memory() -> bool:
    """Apply the thresholds above (once per process); returns whether they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1") == "0" or _user_tuned():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(param, value) for param, value in
                   ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied
