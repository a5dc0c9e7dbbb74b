"""A fixed set of worker threads where items with the same key are handled in order.

`KeyedWorkers(n, handle)`: `submit(key, item)` queues `item`; one of the `n` threads (always
the same one for a key) calls `handle(key, items)` with every item queued for that key since
its last call, oldest first, so a key whose handling is slow gets its items together (the
caller merges them: a client that falls behind catches up in one response). Different keys
run in parallel on different threads. `n == 0` handles each item at once on the calling
thread (`handle(key, [item])`), exceptions included; otherwise an exception of `handle` goes
to `on_error(key, exc)` and the thread goes on.

The stubs use it to send responses: Triton 2.51's `response_sender.send` waits for the server
to take each response (an IPC round trip, the GIL released), so one thread sending for every
stream serializes those waits, while the server's side takes up to 32 at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger("uip.core")


class _Worker:
    def __init__(self, pool: KeyedWorkers, name: str):
        self.pool = pool
        self.cond = threading.Condition()
        self.pending: dict[Hashable, list] = {}  # insertion order: oldest key first
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def put(self, key: Hashable, item: object) -> None:
        with self.cond:
            items = self.pending.get(key)
            if items is None:
                self.pending[key] = [item]
                self.cond.notify()
            else:
                items.append(item)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending:
                    return  # closing and drained
                key = next(iter(self.pending))
                items = self.pending.pop(key)
            try:
                self.pool.handle(key, items)
            except Exception as exc:  # noqa: BLE001 - one key's failure, not the thread's
                self.pool.on_error(key, exc)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()


class KeyedWorkers:
    def __init__(self, n: int, handle: Callable[[Hashable, list], None],
                 on_error: Callable[[Hashable, Exception], None] | None = None,
                 name: str = "uip-worker"):
        if n < 0:
            raise ValueError(f"the number of worker threads must be >= 0, got {n}")
        self.handle = handle
        self.on_error = on_error or (lambda key, exc: log.error(
            "%s: handling %r failed: %s", name, key, exc, exc_info=exc))
        self._workers = [_Worker(self, f"{name}-{k}") for k in range(n)]

    @property
    def threads(self) -> int:
        return len(self._workers)

    def submit(self, key: Hashable, item: object) -> None:
        if not self._workers:
            self.handle(key, [item])
            return
        self._workers[hash(key) % len(self._workers)].put(key, item)

    def close(self, timeout: float = 2.0) -> None:
        """Handle what is queued, then end the threads (waiting up to `timeout` each)."""
        for w in self._workers:
            w.close()
        for w in self._workers:
            w.thread.join(timeout)
