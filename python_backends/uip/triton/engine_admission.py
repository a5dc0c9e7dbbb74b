"""How a request enters the engine, for whichever stub holds it (`llm_engine`, or `llm_bls`
with `engine_transport: local`): one place for the admission rules."""

from __future__ import annotations

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.llm.engine import Engine, GenerationRequest


def compile_guide(engine: Engine, request: GenerationRequest) -> None:
    """A structured-output request's grammar compiled now, before the caller takes its lock
    (the torch runtime caches it; other runtimes have no `guides`)."""
    guides = getattr(engine, "guides", None)
    if request.guide is not None and guides is not None:
        guides().compile(request.guide)


def enqueue_within(engine: Engine, request: GenerationRequest, inflight: int, limit: int,
                   model: str) -> int:
    """The engine's id for `request`, unless `model` holds `limit` requests already
    (UNAVAILABLE: the client retries later)."""
    if inflight >= limit:
        raise Unavailable(f"{model} has {inflight} requests in flight, its limit "
                          "(limits.max_inflight)")
    return engine.enqueue(request)


def client_error(exc: Exception) -> Exception:
    """A ValueError from the tensor contract or the engine (e.g. an unknown adapter) is the
    client's mistake: INVALID_ARG; anything else stays as it is."""
    if isinstance(exc, ValueError) and not isinstance(exc, InvalidInput):
        return InvalidInput(str(exc))
    return exc
