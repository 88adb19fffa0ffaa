"""C kernels built with the system's C compiler on first use, and the threads that run them.

Each kernel source in ``csrc/`` is compiled once per source, flags and compiler (``$CC``, else
``cc``) into ``$BATMANN_HOME/kernels`` (temporary file, then rename: never half-written) and
loaded with ctypes. Where the CPU lacks what the source needs, or no compiler builds it, the
library is unavailable and says why in one line; its callers then keep PyTorch's own kernels.
The kernels split their work over ``torch.get_num_threads()`` threads of one shared pool; each
gives the same bits on any number of threads, so inside
:func:`batmann.utils.determinism.deterministic_kernels` (which sets torch to one thread) they
keep the threads torch had before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from batmann.utils.determinism import invariant_threads

CSRC = Path(__file__).with_name("csrc")

T = TypeVar("T")


def compiler() -> str | None:
    """The C compiler's path (``$CC``, else ``cc``), or None."""
    return shutil.which(os.environ.get("CC", "cc"))


def has_avx2() -> bool:
    """Whether the CPU has AVX2 (every such CPU also has FMA3 and POPCNT)."""
    return bool(getattr(torch.cpu, "_is_avx2_supported", lambda: False)())


class NativeLibrary:
    """One C source, built and loaded on first use (thread-safe; settled once per process).

    ``declare`` sets the ctypes signatures of the loaded library; ``requires`` returns why this
    CPU cannot run it (one line), or None."""

    def __init__(self, source: str, cflags: Sequence[str], declare: Callable[[ctypes.CDLL], None],
                 requires: Callable[[], str | None]):
        self.source = CSRC / source
        self.cflags = tuple(cflags)
        self._declare, self._requires = declare, requires
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self.reason: str | None = None  #: why :meth:`load` gave None (one line), once settled

    def path(self, compiler_path: str) -> Path:
        """Where the library for this source, these flags and ``compiler_path`` is kept."""
        from batmann.utils.paths import batmann_home

        key = self.source.read_bytes() + " ".join((compiler_path, *self.cflags)).encode()
        return batmann_home() / "kernels" / f"{self.source.stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"

    def _build(self, compiler_path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([compiler_path, *self.cflags, str(self.source), "-o", tmp], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                raise OSError(f"{compiler_path} failed: {lines[0] if lines else f'exit status {proc.returncode}'}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load(self) -> ctypes.CDLL | None:
        """The loaded library, or None (then :attr:`reason` says why)."""
        if self._lib is not None or self.reason is not None:  # settled (every layer call asks)
            return self._lib
        with self._lock:
            if self._lib is not None or self.reason is not None:
                return self._lib
            missing = self._requires()
            if missing is not None:
                self.reason = missing
                return None
            cc = compiler()
            if cc is None:
                self.reason = f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH"
                return None
            try:
                target = self.path(cc)
                if not target.exists():
                    self._build(cc, target)
                lib = ctypes.CDLL(str(target))
            except (OSError, subprocess.SubprocessError) as err:
                self.reason = f"could not build {self.source.name}: {err}"
                return None
            self._declare(lib)
            self._lib = lib
            return lib


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forget_threads_in_child() -> None:
    """After ``fork`` the pool's threads do not exist in the child: start afresh there."""
    global _pool_lock, _pool, _pool_size
    _pool_lock, _pool, _pool_size = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_threads_in_child)


def _threads() -> ThreadPoolExecutor:
    global _pool, _pool_size
    n = invariant_threads()
    with _pool_lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="batmann-native"), n
        return _pool


def split(total: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of ``range(total)``, one per thread (at most
    :func:`batmann.utils.determinism.invariant_threads`: torch's thread count, kept inside
    ``deterministic_kernels``, since every kernel here gives the same bits on any thread count)."""
    n = min(total, invariant_threads())
    bounds = [total * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def parallel(fn: Callable[[int, int], T], total: int) -> list[T]:
    """``fn(lo, hi)`` over :func:`split` ``(total)``, on the shared threads (the C calls release the GIL)."""
    ranges = split(total)
    if len(ranges) <= 1:
        return [fn(lo, hi) for lo, hi in ranges]
    return list(_threads().map(lambda r: fn(*r), ranges))
