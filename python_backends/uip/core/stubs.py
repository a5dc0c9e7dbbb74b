"""The Python backend stub processes of a tritonserver, by model (read from /proc via psutil).

Used by the launcher's watchdog (which model's stub died) and by llm_bls (did the llm_engine
stub serving my request die: Triton 2.51 then never answers that request).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

STUB = "triton_python_backend_stub"


def stub_pids(server_pid: int) -> dict[str, set[int]]:
    """Model name -> pids of its live stub processes (zombies count as dead)."""
    out: dict[str, set[int]] = defaultdict(set)
    for child in psutil.Process(server_pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = child.cmdline()
        except psutil.Error:  # exited while we looked
            continue
        if len(cmd) > 1 and cmd[0].endswith(STUB):
            out[Path(cmd[1]).parents[1].name].add(child.pid)  # <repo>/<model>/<ver>/model.py
    return dict(out)


class StubCensus:
    """`stub_pids` of one server, cached for `max_age_s` (many streams ask at once)."""

    def __init__(self, server_pid: int, max_age_s: float = 0.5):
        self.server_pid = server_pid
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._pids: dict[str, set[int]] = {}

    def pids(self, model: str) -> set[int]:
        with self._lock:
            if time.monotonic() - self._at > self.max_age_s:
                try:
                    self._pids = stub_pids(self.server_pid)
                except psutil.Error:
                    self._pids = {}
                self._at = time.monotonic()
            return set(self._pids.get(model, ()))
