"""How results leave the engine, for whichever stub holds it (`llm_engine`'s dispatcher, or
`llm_bls`'s reader with `engine_transport: local`): one thread reads every request's results
through `Engine.await_any`, merged per request (`coalesce`: what a slow reader has not taken
yet goes out as one result)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from uip.llm.engine import Engine, GenerationResult, coalesce
from uip.triton import pb


def relay_results(engine: Engine, closing: threading.Event, timeout_s: float,
                  relay: Callable[[GenerationResult], None],
                  fail_all: Callable[[Exception], None], who: str,
                  periodic: Callable[[], None] | None = None) -> None:
    """Until `closing`: hand each merged result to `relay`; between reads, `periodic` at most
    once per `timeout_s`. A read that fails fails the requests in flight (`fail_all`), not
    the model: the loop goes on."""
    last = 0.0
    while not closing.is_set():
        try:
            results = engine.await_any(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - the requests in flight fail, not the model
            pb.log.exception("%s: reading the engine's results failed", who)
            fail_all(exc)
            closing.wait(timeout_s)
            continue
        for result in coalesce(results):
            relay(result)
        now = time.monotonic()
        if periodic is not None and now - last >= timeout_s:
            last = now
            periodic()
