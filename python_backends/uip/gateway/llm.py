"""Text generation over Triton's llm contract (`llm_bls`, `llm`): deltas as they stream in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uip.clients.llm import grpc_inputs, parameters
from uip.gateway.errors import ApiError
from uip.gateway.schemas import Sampling
from uip.gateway.spec import Limits
from uip.gateway.triton import Triton

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


@dataclass
class GenParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    guide: str | None = None  # guided_decoding (structured output, tool calls)

    @classmethod
    def of(cls, body: Sampling, max_tokens: int | None, limits: Limits,
           param: str = "max_tokens") -> GenParams:
        if body.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", "n", "unsupported_value")
        check_max_tokens(max_tokens, limits, param)
        max_tokens = max_tokens or limits.default_max_tokens
        max_stop = limits.max_stop
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > max_stop:
            raise ApiError(400, f"at most {max_stop} stop sequences (limits.max_stop)", "stop")
        if any(not s for s in stop):
            raise ApiError(400, "stop sequences must not be empty", "stop")
        return cls(max_tokens, body.temperature, body.top_p, body.seed, stop)

    def inputs(self) -> dict[str, Any]:
        return parameters(max_tokens=self.max_tokens, temperature=self.temperature,
                          top_p=self.top_p, seed=self.seed, stop_words=self.stop or None,
                          guided_decoding=self.guide, return_num_output_tokens=True,
                          stream=True)


def check_max_tokens(max_tokens: int | None, limits: Limits, param: str) -> None:
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"{param} must be <= {limits.max_tokens} (limits.max_tokens)",
                       param, "invalid_value")


@dataclass
class Delta:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


def _scalar(outputs: dict[str, np.ndarray], name: str) -> Any:
    value = outputs.get(name)
    if value is None or value.size == 0:
        return None
    item = value.reshape(-1)[0]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else item


async def generate(triton: Triton, model: str, prompt: str, params: GenParams,
                   timeout_s: float) -> AsyncIterator[Delta]:
    """Deltas of one generation; the last carries the finish reason and the token count."""
    inputs = grpc_inputs(prompt, params.inputs())
    tokens = 0
    finish = None
    async for outputs in triton.stream(model, inputs, timeout_s):
        n = _scalar(outputs, "num_output_tokens")
        tokens += int(n or 0)
        reason = _scalar(outputs, "finish_reason")
        if reason:
            finish = FINISH.get(reason, "stop")
        text = _scalar(outputs, "text_output") or ""
        if text:
            yield Delta(text)
    yield Delta("", finish or "stop", tokens)


@dataclass
class Completion:
    text: str
    finish_reason: str
    completion_tokens: int


async def collect(deltas: AsyncIterator[Delta]) -> Completion:
    parts: list[str] = []
    last = Delta()
    async for d in deltas:
        parts.append(d.text)
        last = d
    return Completion("".join(parts), last.finish_reason or "stop", last.completion_tokens)
