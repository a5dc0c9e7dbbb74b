"""Stub side of "no orphans": a Python backend stub exits when tritonserver goes away.

Triton 2.51's stub outlives a SIGKILLed server (seen: reparented to pid 1 for 25 minutes,
ignoring SIGTERM): a thread of it blocks forever, holding the GIL, in a call that waits for the
server (seen: `pb_utils.Metric.set`), so no Python code can run in it any more. The guard is
therefore a tiny shell process beside the stub, which needs no GIL: it polls the stub's parent
pid and SIGKILLs the stub as soon as that is no longer the server (the stub was reparented).
The guard runs in a session of its own and ignores SIGHUP/SIGINT/SIGTERM: a signal sent to the
server's process group (a CI timeout, a terminal's Ctrl-C, `kill -- -PGID`) stops the server
but the stubs ignore SIGTERM, so the guard must outlive exactly that (seen: orphans left
after pytest was stopped while models loaded).
"""

from __future__ import annotations

import os
import subprocess

POLL_S = 0.5
_guard: subprocess.Popen | None = None

_SCRIPT = """
trap '' HUP INT TERM
stat() {{ s=$(cat /proc/{stub}/stat 2>/dev/null) || return 1; s=${{s##*) }}; set -- $s; echo $2; }}
while [ "$(stat)" = "{server}" ]; do sleep {poll}; done
[ -e /proc/{stub} ] && kill -9 {stub} 2>/dev/null
exit 0
"""


def _parent_is_tritonserver() -> bool:
    try:
        with open(f"/proc/{os.getppid()}/comm") as f:
            return f.read().strip() == "tritonserver"
    except OSError:
        return False


def script(stub: int, server: int, poll_s: float = POLL_S) -> str:
    """The guard's shell script: kill `stub` once its parent is no longer `server`."""
    return _SCRIPT.format(stub=stub, server=server, poll=poll_s)


def start(poll_s: float = POLL_S) -> None:
    """Start the guard once per process, only in a stub (a child of tritonserver: unit tests
    import this module too)."""
    global _guard
    if _guard is not None or not _parent_is_tritonserver():
        return
    _guard = subprocess.Popen(["/bin/sh", "-c", script(os.getpid(), os.getppid(), poll_s)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, close_fds=True,
                              start_new_session=True)
