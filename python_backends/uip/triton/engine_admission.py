"""How a request enters the engine, for whichever stub holds it (`llm_engine`, or `llm_bls`
with `engine_transport: local`): one place for the admission rules, and for the LoRA control
requests (`uip lora`) that manage the engine's adapters."""

from __future__ import annotations

from uip.core.admin_key import check_admin_key
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


def lora_control(engine: Engine, control: dict, model: str, runtime: str) -> dict:
    """Answer a LoRA control request (`engine_tensors.decode_control`) to `model`, which holds
    `engine`: the admin key checked, then list, load or unload; the answer is the engine's
    adapters (on disk and on the device). A wrong key, a runtime without adapters, an unknown
    or not loaded adapter are INVALID_ARG."""
    check_admin_key(control.get("key"))
    op, name = control["op"], control.get("name")
    if not hasattr(engine, "adapters"):
        raise InvalidInput(f"the {runtime} runtime manages no LoRA adapters through {model}")
    try:
        if op == "load":
            engine.load_adapter(name)
        elif op == "unload" and not engine.unload_adapter(name):
            raise InvalidInput(f"LoRA adapter {name!r} is not loaded")
    except InvalidInput:
        raise
    except ValueError as exc:
        raise client_error(exc) from exc
    return engine.adapters()
