"""Stub side of "no orphans": a Python backend stub exits when tritonserver goes away.

Triton 2.51's stub outlives a SIGKILLed server (seen: reparented to pid 1 for 25 minutes,
ignoring SIGTERM). A daemon thread compares the parent pid with the one at start-up and ends
the process (`os._exit`, no clean-up that could hang) as soon as it changes.
"""

from __future__ import annotations

import os
import sys
import threading

POLL_S = 0.5
_started = False


def _watch(parent: int, poll_s: float) -> None:
    event = threading.Event()
    while not event.wait(poll_s):
        if os.getppid() != parent:
            print(f"uip: tritonserver (pid {parent}) is gone; stub {os.getpid()} exits",
                  file=sys.stderr, flush=True)
            os._exit(1)


def _parent_is_tritonserver() -> bool:
    try:
        with open(f"/proc/{os.getppid()}/comm") as f:
            return f.read().strip() == "tritonserver"
    except OSError:
        return False


def start(poll_s: float = POLL_S) -> None:
    """Start the guard once per process, only in a stub (a child of tritonserver: unit tests
    import this module too)."""
    global _started
    if _started or not _parent_is_tritonserver():
        return
    _started = True
    threading.Thread(target=_watch, args=(os.getppid(), poll_s), name="uip-orphan-guard",
                     daemon=True).start()
