"""The in-flight batching engine interface every `llm_engine` runtime implements (pure).

Shaped after TensorRT-LLM's executor (`enqueue_request` -> id, `await_responses(id)`,
`cancel_request(id)`, iteration stats), so the `torch` runtime (transformers continuous
batching) and the `tensorrt_llm` runtime sit behind one interface and one set of contract tests.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from uip.llm.guided import Guide

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Absent values mean greedy decoding."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        if self.temperature is not None and self.temperature > 0:
            return False
        return self.top_k in (None, 1) and self.top_p is None and self.temperature is None


@dataclass(frozen=True)
class GenerationRequest:
    input_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_id: int | None = None
    pad_id: int | None = None
    stop_words: list[list[int]] = field(default_factory=list)  # token sequences that end output
    bad_words: list[list[int]] = field(default_factory=list)  # token sequences never produced
    streaming: bool = True
    lora_name: str | None = None  # a LoRA adapter of the deployment (None: the base model)
    guide: Guide | None = None  # structured output: what the tokens must match


@dataclass(frozen=True)
class GenerationResult:
    """One response of the engine for a request: new tokens since the last result when
    streaming, all generated tokens in the final result otherwise."""

    request_id: int
    tokens: list[int]
    is_final: bool
    finish_reason: FinishReason | None = None
    error: str | None = None


@dataclass(frozen=True)
class EngineStats:
    active_requests: int
    queued_requests: int
    kv_blocks_used: int
    kv_blocks_total: int
    tokens_generated: int
    prefix_cache_queries: int = 0  # prompt blocks looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, found there
    preemptions: int = 0  # sequences evicted from a full cache (recomputed later)
    # engine steps so far by how they ran (the torch runtime: graph_decode, graph_mixed,
    # graph_prefill, split_graph_prefill, split_eager, eager)
    steps_by_path: dict[str, int] = field(default_factory=dict)


class Engine(abc.ABC):
    """An in-flight batching engine: requests join between decode steps and leave when done."""

    @abc.abstractmethod
    def enqueue(self, request: GenerationRequest) -> int:
        """Queue a request; returns its id."""

    @abc.abstractmethod
    def await_responses(self, request_id: int, timeout: float | None = None
                        ) -> list[GenerationResult]:
        """Results ready for a request (may be empty on timeout); the last has is_final."""

    @abc.abstractmethod
    def await_any(self, timeout: float | None = None) -> list[GenerationResult]:
        """Results ready for any request (waiting up to `timeout` while there are none), in
        order per request: the serving side's one dispatcher reads every request through
        this. A consumer reads through either this or `await_responses`, not both."""

    @abc.abstractmethod
    def cancel(self, request_id: int) -> None:
        """Stop a request; it gets a final result with finish_reason 'cancelled'."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...


def coalesce(results: list[GenerationResult]) -> list[GenerationResult]:
    """Merge each request's results that are ready together into one (tokens in order; the
    last one's final flag and finish reason), so a relay that fell behind sends one larger
    delta instead of one response per token; an error result ends the merge and is kept as
    is. Requests that end here come first (each request's own results stay in order): the
    client's next request waits for a final response, not for another stream's delta."""
    groups: dict[int, list[GenerationResult]] = {}
    for r in results:
        out = groups.setdefault(r.request_id, [])
        prev = out[-1] if out else None
        if prev is not None and prev.error is None and not prev.is_final and r.error is None:
            out[-1] = GenerationResult(prev.request_id, prev.tokens + r.tokens, r.is_final,
                                       r.finish_reason)
        else:
            out.append(r)
    ordered = sorted(groups.values(),  # stable: ending requests first, otherwise as they came
                     key=lambda g: not any(r.is_final or r.error is not None for r in g))
    return [r for g in ordered for r in g]
