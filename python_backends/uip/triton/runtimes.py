"""Which `Engine` serves `llm_engine` for a spec's `runtime` (each imported only when chosen)."""

from __future__ import annotations

from uip.llm.engine import Engine

RUNTIMES = ("torch", "tensorrt_llm")  # the spec's `runtime` values for llm_engine


def engine_class(runtime: str) -> type[Engine]:
    if runtime == "torch":
        from uip.llm.paged_runtime import PagedEngine

        return PagedEngine
    if runtime == "tensorrt_llm":
        from uip.trtllm.runtime import TrtllmEngine

        return TrtllmEngine
    raise ValueError(f"llm_engine runtime {runtime!r} is not one of {list(RUNTIMES)}; "
                     "set the spec's `runtime`")


def create_engine(settings) -> Engine:
    """The engine for a model's settings (`uip.core.settings.ModelSettings`)."""
    return engine_class(settings.runtime).from_settings(settings)
