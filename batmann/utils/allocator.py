"""Keep freed tensor memory in the process, so that large tensors do not fault their pages in anew.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc hands blocks above its mmap
threshold (128 KB, raised as large blocks are freed, never above 32 MB) straight back to the
kernel when they are freed, and trims the top of the heap beyond twice that threshold. Each new
tensor of a few MB or more then costs one page fault per 4 KB page it touches: about 2 us per
page here, so an out-of-place operation on a 25 MB activation (64 images x 128 channels x
28 x 28) took 7.6 ms instead of 2.5 ms (``docs/performance.md``). A controller forward pass on
crossbars faulted about 80,000 pages per 200 images, a digital one about 45,000.

:func:`retain_freed_memory` raises the mmap threshold to glibc's maximum and the trim threshold
to 1 GB: freed blocks up to 32 MB stay in the heap and are reused. Peak memory is unchanged;
up to 1 GB freed at the top of the heap may stay mapped. The command line calls it at start-up
(and so do study workers); it does nothing where the C library is not glibc, and nothing when
``BATMANN_RETAIN_MEMORY=0`` or the user set glibc's own ``MALLOC_*`` or ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
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
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(param, value) for param, value in
                   ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied
