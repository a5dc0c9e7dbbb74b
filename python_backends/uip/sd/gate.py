"""StepGate: lines the sampling loops of concurrent requests up, so sd_unet's dynamic batcher
merges their steps into one UNet call.

Why: with one UNet instance, concurrent loops fall into a ping-pong. While group A's UNet call
runs, group B's requests queue; when A finishes, B goes at once (Triton's queue delay counts
from B's arrival, long past) and A's next steps queue behind B. Each group runs alone, every
step, for as long as the requests live (seen: 2 requests never merged on an H100).

The gate, shared by the orchestrator instances (processes) of one server through a small
memory-mapped file: before its UNet call a loop waits while another loop's call that began
before this loop's last call ended (an earlier cohort) is still in flight; calls that began
since then are its own cohort, and it goes at once to join them within the batcher's queue
delay. Only calls of the same latent shape count (others cannot share a batch). Alone, a loop
never waits. Entries of a process that died are skipped; waiting is capped.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SLOTS = 256
_claimed_here: set[tuple[str, int]] = set()  # (file, slot) taken by gates of this process
_lock = threading.Lock()


def _folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(folder: Path) -> list[str]:
    """Remove gate files whose every owner is gone (servers that were killed); their names."""
    removed = []
    for path in folder.glob("uip-stepgate-*"):
        try:
            with open(path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    pids = np.frombuffer(f.read(SLOTS * 8), np.int64)
                    owners = [int(p) for p in pids if p]
                    # no owners yet: a gate being created right now, unless it is old
                    fresh = time.time() - os.fstat(f.fileno()).st_mtime < 600
                    if (owners or not fresh) and not any(_alive(p) for p in owners):
                        os.unlink(path)
                        removed.append(path.name)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            continue
    return removed


class StepGate:
    def __init__(self, key: str, max_wait_s: float = 5.0, stale_after_s: float = 120.0,
                 poll_s: float = 0.0002, folder: Path | None = None):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        folder = folder or _folder()
        sweep(folder)
        self.path = str(folder / f"uip-stepgate-{safe}")
        self.max_wait_s, self.stale_after_s, self.poll_s = max_wait_s, stale_after_s, poll_s
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = SLOTS * 8 * 3
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._pids = np.ndarray((SLOTS,), np.int64, self._mm, 0)
        self._since = np.ndarray((SLOTS,), np.float64, self._mm, SLOTS * 8)
        self._shape = np.ndarray((SLOTS,), np.int64, self._mm, SLOTS * 16)
        self.slot = self._claim()
        self._ref: float | None = None  # when this loop's last UNet call ended
        self.waited_s = 0.0

    def _claim(self) -> int:
        with open(self.path, "rb") as f, _lock:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                me = os.getpid()
                for i in range(SLOTS):
                    pid = int(self._pids[i])
                    if (self.path, i) in _claimed_here:
                        continue
                    if pid == 0 or pid == me or not _alive(pid):
                        self._pids[i] = me
                        self._since[i] = 0.0
                        _claimed_here.add((self.path, i))
                        return i
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        raise RuntimeError(f"StepGate {self.path}: all {SLOTS} slots are taken")

    # --- one sampling loop -----------------------------------------------------------------
    def start_loop(self) -> None:
        """A new request's loop: its first step waits for the calls already in flight."""
        self._ref = None

    def wait(self, shape_key: int) -> float:
        """Block while an earlier cohort's call of this shape is in flight; seconds waited."""
        now = time.monotonic()
        ref = self._ref if self._ref is not None else now
        deadline = now + self.max_wait_s
        swept = False
        while True:
            since = self._since.copy()
            since[self.slot] = 0.0
            t = time.monotonic()
            busy = (since > 0) & (since < ref) & (t - since < self.stale_after_s) & (
                self._shape == shape_key)
            if busy.any() and not swept:  # a loop whose process died mid-call never ends it
                swept = True
                for i in np.flatnonzero(busy):
                    if not _alive(int(self._pids[i])):
                        self._since[i] = 0.0
                continue
            if not busy.any() or t > deadline:
                waited = t - now
                self.waited_s += waited
                return waited
            time.sleep(self.poll_s)

    def begin(self, shape_key: int) -> None:
        self._shape[self.slot] = shape_key
        self._since[self.slot] = time.monotonic()

    def end(self) -> None:
        self._since[self.slot] = 0.0
        self._ref = time.monotonic()

    def close(self) -> None:
        if getattr(self, "_mm", None) is None:
            return
        with open(self.path, "rb") as f, _lock:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self._since[self.slot] = 0.0
                self._pids[self.slot] = 0
                _claimed_here.discard((self.path, self.slot))
                if not self._pids.any():  # the last one out removes the file
                    os.unlink(self.path)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        del self._pids, self._since, self._shape
        self._mm.close()
        self._mm = None


def shape_key(shape: tuple[int, ...]) -> int:
    """A stable int for a latent shape (without the batch dimension)."""
    key = 17
    for d in shape:
        key = (key * 1_000_003 + int(d)) % (1 << 62)
    return key
