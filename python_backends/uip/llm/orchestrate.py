"""`llm_bls`: one client request driven over llm_engine, without Triton (pure).

What the BLS model does that an ensemble cannot:
- stop strings that span tokens, with OpenAI semantics (the output ends right before the stop
  string, finish_reason `stop`; text that may be the start of a stop string is held back);
- stopping the engine request the moment a stop string matches or the client cancels: the
  engine gets a second request with the same request id and `stop` true (TensorRT-LLM's
  convention; a BLS caller in Triton 2.51 cannot cancel its own request);
- exact incremental detokenization with per-request state (the request's own objects).

`TextPipeline` turns engine chunks into client responses; `RequestRun` is one request's drive
as a step-able state machine (stop strings, cancels and errors, with `run`'s semantics), which
llm_bls's one driver thread advances for every in-flight request; `run` drives one
`EngineStream` (`uip.triton.engine_streams.BlsEngineStream`, a fake in tests) with it on the
calling thread and polls the client's cancellation between chunks. Everything mutable is
created per request.
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


class RequestRun:
    """One request's drive as a state machine (no threads, no waiting): the caller feeds it
    what the engine sent (`on_chunk`, `on_error`), the client's cancel (`on_cancel`) and the
    clock (`on_tick`); it sends the client's responses through `send` and stops the engine
    request through `stop_engine`. `run` loops over it for one request; llm_bls's driver
    thread steps every in-flight request's own instance.

    - running: chunks go through the pipeline; an engine error is raised from `on_error` (the
      caller turns it into the client's error response); a stop string ends the client's
      output at once and stops the engine (draining);
    - cancelled: the engine is stopped and, once it confirmed (its final chunk or an error) or
      `drain_s` passed, the client gets its final `cancelled` response;
    - draining (after a stop string): the client is done; waits for the engine's last word the
      same way, so the engine request is not forgotten while it still runs;
    - done: nothing more to do (`finished`).
    """

    RUNNING, CANCELLING, DRAINING, DONE = "running", "cancelling", "draining", "done"

    def __init__(self, pipeline: TextPipeline, send: Callable[[ClientResponse], None],
                 stop_engine: Callable[[], None], drain_s: float = 30.0):
        self.pipeline = pipeline
        self._send = send
        self._stop_engine = stop_engine
        self.drain_s = drain_s
        self.state = self.RUNNING
        self.finish_reason: str | None = None
        self.client_done = False  # the client's final response went out (or was attempted)
        self.engine_ended = False  # the engine's final chunk or an error was seen
        self._stopped = False
        self._deadline = 0.0

    @property
    def running(self) -> bool:
        return self.state == self.RUNNING

    @property
    def finished(self) -> bool:
        return self.state == self.DONE

    def _respond(self, resp: ClientResponse) -> None:
        self.client_done = self.client_done or resp.final
        self._send(resp)

    def stop_engine(self) -> None:
        """Stop the engine request unless it ended already (once)."""
        if not self._stopped and not self.engine_ended:
            self._stopped = True
            self._stop_engine()

    def _drain(self, state: str, now: float) -> None:
        self.state = state
        self._deadline = now + self.drain_s
        self.stop_engine()

    def _drained(self) -> None:
        if self.state == self.CANCELLING:
            self.state = self.DONE
            self._respond(self.pipeline.cancel())
        self.state = self.DONE

    def on_chunk(self, chunk: EngineChunk, now: float) -> None:
        if self.finished:
            return
        if chunk.final:
            self.engine_ended = True
        if self.state != self.RUNNING:
            if chunk.final:  # the engine confirmed the stop
                self._drained()
            return
        resp = self.pipeline.feed(chunk)
        if resp is not None:
            self._respond(resp)
        if self.pipeline.done:
            self.finish_reason = resp.finish_reason if resp is not None else "stop"
            if chunk.final:
                self.state = self.DONE
            else:  # a stop string ended the output before the engine did
                self._drain(self.DRAINING, now)

    def on_error(self, exc: EngineStreamError, now: float) -> None:
        """The engine request failed: raised again while the client waits for text (the
        caller reports it); the engine's last word while cancelling or draining."""
        self.engine_ended = True
        if self.state == self.RUNNING:
            self.state = self.DONE
            raise exc
        if not self.finished:
            self._drained()

    def on_cancel(self, now: float) -> None:
        """The client cancelled: stop the engine; the `cancelled` response follows its end."""
        if self.state == self.RUNNING:
            self.finish_reason = "cancelled"
            self._drain(self.CANCELLING, now)

    def on_tick(self, now: float) -> None:
        """Give up waiting for a stopped engine request after `drain_s`."""
        if self.state in (self.CANCELLING, self.DRAINING) and now >= self._deadline:
            self._drained()

    def abandon(self) -> None:
        """The caller failed this request (and reported it): stop the engine, end here."""
        self.state = self.DONE
        self.stop_engine()


def run(pipeline: TextPipeline, engine: EngineStream, send: Callable[[ClientResponse], None],
        cancelled: Callable[[], bool], poll_s: float = 0.02, drain_s: float = 30.0) -> str:
    """Drive one request to its end on the calling thread; returns the finish reason.
    EngineStreamError propagates (the caller turns it into the client's error response)."""
    engine.start()
    r = RequestRun(pipeline, send, engine.stop, drain_s)
    while True:
        if r.running and cancelled():
            r.on_cancel(time.monotonic())
        r.on_tick(time.monotonic())
        if r.finished:
            return r.finish_reason or "stop"
        try:
            chunk = engine.next(poll_s)
        except EngineStreamError as exc:
            r.on_error(exc, time.monotonic())  # raises while running
            continue
        if chunk is not None:
            r.on_chunk(chunk, time.monotonic())
