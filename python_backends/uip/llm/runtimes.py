"""Which `Engine` class serves `llm_engine` for a spec's `runtime` (imported lazily)."""

from __future__ import annotations

import importlib

from uip.llm.engine import Engine

# runtime name (the spec's `runtime`) -> "module:Class"; the class has `from_settings(settings)`
RUNTIMES: dict[str, str] = {
    "torch": "uip.llm.torch_engine:TorchEngine",
    "tensorrt_llm": "uip.llm.trtllm_engine:TrtllmEngine",
}


def engine_class(runtime: str) -> type[Engine]:
    if runtime not in RUNTIMES:
        raise ValueError(f"llm_engine runtime {runtime!r} is not one of {sorted(RUNTIMES)}; "
                         "set the spec's `runtime`")
    module, cls = RUNTIMES[runtime].split(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(settings) -> Engine:
    """The engine for a model's settings (`uip.serving.settings.ModelSettings`)."""
    return engine_class(settings.runtime).from_settings(settings)
