"""Local worker processes: they end with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

DRIVER = """
import sys, time
from batmann.study.executors import ProcessExecutor
ex = ProcessExecutor(1)
future = ex._pool.submit(time.sleep, 120)  # a task far longer than the test
while not ex._pool._processes:
    time.sleep(0.05)
print(*ex._pool._processes, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended: only its exit status is left
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_worker_ends_when_its_parent_is_killed_mid_task(sig):
    """A parent killed by a signal runs no clean-up: without the watch its worker would go on
    with its task (an FGSM row: an hour of appending to the log a rerun appends to)."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(driver.stdout.readline().split()[0])
        assert _alive(worker)
        driver.send_signal(sig)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived its parent"
    finally:
        driver.kill()
        driver.wait()
