"""Text generation over Triton's llm contract (`llm_bls`, `llm`): deltas as they stream in."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from uip.clients.llm import grpc_request, parameters
from uip.gateway.errors import ApiError
from uip.gateway.schemas import Sampling
from uip.gateway.spec import Limits
from uip.gateway.triton import ResponseStream, Triton

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


SEED_SPACE = 2**64  # llm_bls's seed is a uint64


@dataclass
class GenParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1  # choices: n generations of the same prompt
    lora_name: str | None = None  # set per target (model id '<model>:<adapter>')
    guide: str | None = None  # guided_decoding (structured output, tool calls)

    @classmethod
    def of(cls, body: Sampling, max_tokens: int | None, limits: Limits,
           param: str = "max_tokens") -> GenParams:
        n = body.n or 1
        if n > limits.max_choices:
            raise ApiError(400, f"n must be <= {limits.max_choices} (limits.max_choices)", "n",
                           "invalid_value")
        check_max_tokens(max_tokens, limits, param)
        max_tokens = max_tokens or limits.default_max_tokens
        max_stop = limits.max_stop
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > max_stop:
            raise ApiError(400, f"at most {max_stop} stop sequences (limits.max_stop)", "stop")
        if any(not s for s in stop):
            raise ApiError(400, "stop sequences must not be empty", "stop")
        return cls(max_tokens, body.temperature, body.top_p, body.seed, stop, n)

    def inputs(self, choice: int = 0) -> dict[str, Any]:
        """llm_bls's inputs for choice `choice`: with a seed, choice i samples with seed + i
        (mod 2**64), so each choice differs and the whole answer is reproducible."""
        seed = None if self.seed is None else (self.seed + choice) % SEED_SPACE
        return parameters(max_tokens=self.max_tokens, temperature=self.temperature,
                          top_p=self.top_p, seed=seed, stop_words=self.stop or None,
                          guided_decoding=self.guide, return_num_output_tokens=True,
                          stream=True, lora_name=self.lora_name)


def check_max_tokens(max_tokens: int | None, limits: Limits, param: str) -> None:
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"{param} must be <= {limits.max_tokens} (limits.max_tokens)",
                       param, "invalid_value")


@dataclass
class Delta:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


def generate(triton: Triton, model: str, prompt: str, params: GenParams,
             timeout_s: float, choice: int = 0) -> Deltas:
    """The deltas of one generation; the last carries the finish reason and the token count.
    Its request is sent now (Triton.stream), not when the deltas are first read."""
    request = grpc_request(model, prompt, params.inputs(choice), f"gw-{uuid.uuid4().hex}")
    return Deltas(triton.stream(request, timeout_s))


class Deltas:
    """Text deltas of llm_bls's responses, then one `Delta` with the finish reason and the
    completion tokens. Closing it (also before the first read) cancels the request."""

    def __init__(self, stream: ResponseStream):
        self._stream, self._tokens, self._finish, self._ended = stream, 0, None, False

    def __aiter__(self) -> Deltas:
        return self

    async def __anext__(self) -> Delta:
        while not self._ended:
            try:
                outputs = await anext(self._stream)
            except StopAsyncIteration:
                self._ended = True
                return Delta("", self._finish or "stop", self._tokens)
            self._tokens += outputs.get("num_output_tokens") or 0
            reason = outputs.get("finish_reason")
            if reason:
                self._finish = FINISH.get(reason, "stop")
            text = outputs.get("text_output")
            if text:
                return Delta(text)
        raise StopAsyncIteration

    def cancel(self) -> None:
        self._ended = True
        self._stream.cancel()

    async def aclose(self) -> None:
        self.cancel()
