"""The stub-side orphan guard's shell script kills its process once the parent changes,
and exits by itself when the process ends first (no server needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from uip.triton.orphan_guard import script

PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if ") Z " in f.read():
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_the_guard_kills_its_process_when_the_parent_dies():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    guard = subprocess.Popen(["/bin/sh", "-c", script(child, parent.pid, 0.1)])
    time.sleep(0.5)
    assert guard.poll() is None and not _wait_gone(child, 0.1)  # parent alive: nothing happens
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _wait_gone(child), "the orphan was not killed"
    assert guard.wait(5) == 0


def test_the_guard_exits_when_its_process_ends_first():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    guard = subprocess.Popen(["/bin/sh", "-c", script(child.pid, os.getpid(), 0.1)])
    child.wait()
    assert guard.wait(5) == 0
