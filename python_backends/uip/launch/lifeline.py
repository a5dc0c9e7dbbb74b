"""Launcher side of "no orphans": tritonserver dies with the process that started it.

`die_with_parent()` returns a Popen `preexec_fn` that asks Linux (prctl PR_SET_PDEATHSIG) to
SIGKILL the child when its parent thread ends, whatever killed the parent; the stubs then see
their server gone (uip.triton.orphan_guard) and exit. Start the server from a thread that lives
as long as the server (the main thread): the signal follows the thread, not the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A preexec_fn for subprocess.Popen (None where prctl does not exist)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        _pdeathsig(sig, parent)

    return preexec


def exit_with_parent(sig: int, parent: int) -> None:
    """The same, asked by the child itself once it runs (no preexec_fn, which is unsafe in a
    parent with threads); `parent`: the pid of the parent that started it, passed by it."""
    if sys.platform.startswith("linux"):
        _pdeathsig(sig, parent)


def _pdeathsig(sig: int, parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
