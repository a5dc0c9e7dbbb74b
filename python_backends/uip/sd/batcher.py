"""StepBatcher: in-flight step batching of Stable Diffusion requests, as an LLM engine batches
decode steps (pure Python: the networks are SDLoop's callables; unit-tested without Triton).

Requests wait in order; between iterations, waiting requests join while the active ones number
fewer than `max_batch` (their prompts encoded in one text-encoder call, their negative prompts
in another). Each iteration then makes ONE UNet call per latent size over all active requests
of that size (each request's CFG pair, a timestep per sample) and steps every request's own
scheduler. Finished requests of one size are decoded in one VAE call and leave; a cancelled
request leaves at the next iteration, freeing its slot for the next waiting request. A failing
network call fails only the requests it carried.

`submit` is thread-safe; `run_once` is one iteration (tests drive it); `start` runs iterations
on a thread of its own until `stop`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from uip.core.faults import Unavailable
from uip.sd.loop import Cancelled, Job, SDLoop
from uip.sd.request import SDRequest

log = logging.getLogger("uip.sd")

# done(image, None) or done(None, error): called once per request, on the batcher's thread
Done = Callable[[np.ndarray | None, BaseException | None], None]


@dataclass(eq=False)
class Entry:
    req: SDRequest
    cancelled: Callable[[], bool]
    done: Done
    job: Job | None = None


@dataclass
class BatcherStats:
    """What the batcher did (for tests, logs and benchmarks)."""

    iterations: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    encode_calls: int = 0
    decode_calls: int = 0
    max_active: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # requests per UNet call (last 1000)
    active: int = 0  # requests stepped now (in `snapshot` only)
    waiting: int = 0  # requests waiting for a slot (in `snapshot` only)


class StepBatcher:
    def __init__(self, loop: SDLoop, max_batch: int = 8, max_waiting: int = 64):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.loop = loop
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.waiting: deque[Entry] = deque()
        self.active: list[Entry] = []
        self.stats = BatcherStats()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- the request side --------------------------------------------------------------------
    def submit(self, req: SDRequest, cancelled: Callable[[], bool], done: Done) -> None:
        """Queue a request; Unavailable when `max_waiting` requests already wait."""
        with self._cv:
            if len(self.waiting) >= self.max_waiting:
                raise Unavailable(f"{len(self.waiting)} stable_diffusion requests are waiting "
                                  f"(limit max_waiting={self.max_waiting})")
            self.waiting.append(Entry(req, cancelled, done))
            self._cv.notify()

    def snapshot(self) -> BatcherStats:
        """The running totals and the load now (for metrics; without `batch_sizes`)."""
        with self._cv:
            return replace(self.stats, batch_sizes=[], active=len(self.active),
                           waiting=len(self.waiting))

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    # --- one iteration -----------------------------------------------------------------------
    def run_once(self) -> bool:
        """Admit, step, finish; False when there was nothing to do."""
        self._drop_cancelled()
        self._admit()
        if not self.active:
            return False
        self.stats.iterations += 1
        by_shape: dict[tuple, list[Entry]] = {}
        for e in self.active:
            by_shape.setdefault(e.job.latent_shape, []).append(e)
        for group in by_shape.values():
            self._guarded(group, lambda g=group: self.loop.step([e.job for e in g]))
            self.stats.unet_calls += 1
            self.stats.unet_rows += sum(e.job.rows for e in group)
            self.stats.batch_sizes = [*self.stats.batch_sizes[-999:], len(group)]
        finished: dict[tuple, list[Entry]] = {}
        for e in self.active:
            if e.job.finished:
                finished.setdefault(e.job.latent_shape, []).append(e)
        for group in finished.values():
            self._remove(group)
            self.stats.decode_calls += 1
            try:
                images = self.loop.finish([e.job for e in group])
            except Exception as exc:  # noqa: BLE001 - the group's requests get the error
                self._fail(group, exc)
                continue
            for e, image in zip(group, images, strict=True):
                self._call(e, image, None)
        return True

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [e for e in (*self.waiting, *self.active) if self._is_cancelled(e)]
            for e in gone:
                if e in self.active:
                    self.active.remove(e)
                else:
                    self.waiting.remove(e)
        for e in gone:
            self._call(e, None, Cancelled())

    def _admit(self) -> None:
        """Waiting requests join in order while there is room; those that arrive while the
        newcomers' prompts are encoded join too (no timing window: only what is there)."""
        while True:
            with self._cv:
                room = self.max_batch - len(self.active)
                new = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            if not new:
                return
            try:
                for e in new:
                    e.job = self.loop.job(e.req)
                self.stats.encode_calls += 1
                self.loop.begin([e.job for e in new])
            except Exception as exc:  # noqa: BLE001 - the newcomers get the error
                self._fail(new, exc)
                continue
            with self._cv:
                self.active.extend(new)
                self.stats.max_active = max(self.stats.max_active, len(self.active))

    def _guarded(self, group: list[Entry], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the call's requests get the error
            self._remove(group)
            self._fail(group, exc)

    def _remove(self, group: list[Entry]) -> None:
        with self._cv:
            for e in group:
                if e in self.active:
                    self.active.remove(e)

    def _fail(self, group: list[Entry], exc: BaseException) -> None:
        for e in group:
            self._call(e, None, exc)

    @staticmethod
    def _is_cancelled(e: Entry) -> bool:
        try:
            return bool(e.cancelled())
        except Exception:  # noqa: BLE001 - a client that cannot be asked is gone
            return True

    @staticmethod
    def _call(e: Entry, image, error) -> None:
        try:
            e.done(image, error)
        except Exception:  # noqa: BLE001 - one client's failed response stops no one else
            log.exception("could not answer a stable_diffusion request")

    # --- the thread --------------------------------------------------------------------------
    def start(self) -> StepBatcher:
        self._thread = threading.Thread(target=self._run, name="sd-step-batcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.busy and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - keep serving; requests failed in run_once
                log.exception("stable_diffusion batcher iteration failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still there fail UNAVAILABLE."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cv:
            left = [*self.waiting, *self.active]
            self.waiting.clear()
            self.active.clear()
        self._fail(left, Unavailable("stable_diffusion is shutting down"))
