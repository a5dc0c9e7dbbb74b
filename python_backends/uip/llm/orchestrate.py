"""`llm_bls`: one client request driven over llm_engine, without Triton (pure).

What the BLS model does that an ensemble cannot:
- stop strings that span tokens, with OpenAI semantics (the output ends right before the stop
  string, finish_reason `stop`; text that may be the start of a stop string is held back);
- stopping the engine request the moment a stop string matches or the client cancels: the
  engine gets a second request with the same request id and `stop` true (TensorRT-LLM's
  convention; a BLS caller in Triton 2.51 cannot cancel its own request);
- exact incremental detokenization with per-request state (the request's own objects).

`TextPipeline` turns engine chunks into client responses; `run` drives an `EngineStream`
(`uip.triton.engine_streams` in production, a fake in tests) and polls the client's
cancellation between chunks. Everything mutable is created per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from uip.llm.detokenize import IncrementalDetokenizer
from uip.llm.engine_tensors import EngineChunk
from uip.llm.preprocess import LlmRequest
from uip.llm.stop_strings import StopStringMatcher


@dataclass(frozen=True)
class ClientResponse:
    text: str
    num_output_tokens: int  # engine tokens since the previous response
    finish_reason: str | None = None  # set on the final response only

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


def client_outputs(resp: ClientResponse, req: LlmRequest) -> dict[str, np.ndarray]:
    """The output tensors of one client response (batch 1), per the `llm` contract."""
    out = {
        "text_output": np.array([[resp.text.encode()]], dtype=object),
        "finish_reason": np.array([[(resp.finish_reason or "").encode()]], dtype=object),
    }
    if req.return_num_input_tokens:
        out["num_input_tokens"] = np.array([[len(req.input_ids)]], dtype=np.int32)
    if req.return_num_output_tokens:
        out["num_output_tokens"] = np.array([[resp.num_output_tokens]], dtype=np.int32)
    return out


class TextPipeline:
    """Per request: engine chunks -> client responses (detokenize, stop strings, echo).

    Streaming: one response per chunk that completes some text (chunks that only add held-back
    bytes or a possible stop-string start send nothing; their tokens count in the next
    response), and always a final one. Not streaming: exactly one, final, response.
    `num_output_tokens` of a response counts the engine tokens since the previous response,
    so over a stream they add up to the tokens generated.
    """

    def __init__(self, tokenizer, req: LlmRequest):
        self.req = req
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopStringMatcher(req.stop_words)
        self.prefix = "" if req.exclude_input_in_output else req.prompt
        self.buffer: list[str] = []  # text not sent yet
        self.tokens = 0  # engine tokens not reported yet
        self.done = False
        self.stopped_by_string = False

    def _take(self, finish_reason: str | None) -> ClientResponse:
        text = self.prefix + "".join(self.buffer)
        self.prefix, self.buffer = "", []
        resp = ClientResponse(text, self.tokens, finish_reason)
        self.tokens = 0
        if finish_reason is not None:
            self.done = True
        return resp

    def feed(self, chunk: EngineChunk) -> ClientResponse | None:
        """Take one engine chunk; the response to send now, if any."""
        if self.done:
            return None
        self.tokens += len(chunk.tokens)
        check = self.stops.feed(self.detok.add(chunk.tokens))
        self.buffer.append(check.text)
        if check.stopped:
            self.stopped_by_string = True
            return self._take("stop")
        if chunk.final:
            check = self.stops.feed(self.detok.finish())
            self.buffer.append(check.text)
            if check.stopped:
                self.stopped_by_string = True
                return self._take("stop")
            self.buffer.append(self.stops.finish())
            return self._take(chunk.finish_reason)
        if self.req.stream and (self.prefix or any(self.buffer)):
            return self._take(None)
        return None

    def cancel(self) -> ClientResponse:
        """The client cancelled: end with what was resolved so far."""
        return self._take("cancelled")


class EngineStreamError(Exception):
    """The llm_engine request failed (its error response, or the transport's); `error` is
    the Triton error to pass on to the client, when there is one."""

    def __init__(self, message: str, error: object = None):
        super().__init__(message)
        self.error = error


class EngineStream(Protocol):
    def start(self) -> None:
        """Submit the generation request."""

    def next(self, timeout: float) -> EngineChunk | None:
        """The next chunk, None on timeout; raises EngineStreamError; None after the last."""

    def stop(self) -> None:
        """Ask the engine to stop this request (idempotent); its final chunk still comes."""


def drain(engine: EngineStream, timeout: float) -> bool:
    """Read until the engine's final chunk; False if it did not come within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = engine.next(min(0.1, max(deadline - time.monotonic(), 0.001)))
        except EngineStreamError:
            return True
        if chunk is not None and chunk.final:
            return True
    return False


def run(pipeline: TextPipeline, engine: EngineStream, send: Callable[[ClientResponse], None],
        cancelled: Callable[[], bool], poll_s: float = 0.02, drain_s: float = 30.0) -> str:
    """Drive one request to its end; returns the finish reason. EngineStreamError propagates (the
    caller turns it into the client's error response)."""
    engine.start()
    while True:
        if cancelled():
            engine.stop()
            drain(engine, drain_s)
            send(pipeline.cancel())
            return "cancelled"
        chunk = engine.next(poll_s)
        if chunk is None:
            continue
        resp = pipeline.feed(chunk)
        if resp is not None:
            send(resp)
        if pipeline.done:
            if not chunk.final:  # a stop string ended the output before the engine did
                engine.stop()
                drain(engine, drain_s)
            return resp.finish_reason if resp is not None else "stop"
