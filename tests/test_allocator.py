"""Freed tensor memory stays in the process (glibc), so that the next large tensors reuse its pages."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import os, torch
from batmann.utils.allocator import retain_freed_memory
applied = retain_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
t = torch.empty(6 << 20).fill_(1.0)  # 24 MB, every page touched
before = rss()
del t
print(applied, before - rss())
"""


def _probe(**env) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    applied, released = out.stdout.split()
    return applied == "True", int(released)


glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"),
                           reason="the thresholds are glibc's; resident memory is read from /proc")


@glibc
def test_a_freed_large_tensor_stays_in_the_process():
    applied, released = _probe()
    assert applied and released < (1 << 20)
    # glibc's defaults: the block goes back to the kernel, and the next one faults its pages in again
    applied, released = _probe(BATMANN_RETAIN_MEMORY="0")
    assert not applied and released > (20 << 20)


@glibc
def test_the_users_own_malloc_settings_win():
    assert _probe(MALLOC_TRIM_THRESHOLD_="131072")[0] is False
    assert _probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1")[0] is False
