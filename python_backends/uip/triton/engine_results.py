"""How results leave the engine, for whichever stub holds it (`llm_engine`'s dispatcher, or
`llm_bls`'s reader with `engine_transport: local`): one thread reads every request's results
through `Engine.await_any`, merged per request (`coalesce`: what a slow reader has not taken
yet goes out as one result)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from uip.llm.engine import Engine, GenerationResult, coalesce
from uip.triton import pb


def relay_results(engine: Engine, closing: threading.Event, timeout_s: float,
                  relay: Callable[[GenerationResult], None],
                  fail_all: Callable[[Exception], None], who: str,
                  each_round: Callable[[], None] | None = None) -> None:
    """Until `closing`: hand each merged result to `relay`, then call `each_round`. A read
    that fails fails the requests in flight (`fail_all`), not the model: the loop goes on."""
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
        if each_round is not None:
            each_round()
