"""The two ways llm_bls reaches llm_engine, each an `EngineStream` (uip.llm.orchestrate).

- `GrpcEngineStream` (`engine_transport: grpc`, the default): the server's own gRPC endpoint.
  Why not a decoupled BLS call: Triton 2.51's Python stub builds every decoupled BLS
  response's numpy arrays on its queue-monitor thread without holding the GIL
  (`Stub::ProcessBLSResponseDecoupled`). With other Python threads running, as in a model that
  serves many streams at once, that corrupts the interpreter's allocator: seen as segfaults in
  `_PyObject_Malloc` within seconds of 8 concurrent llm_bls streams. A gRPC stream keeps every
  Python object on threads that hold the GIL, and its cancellation reaches llm_engine as a
  real client cancel.
- `BlsEngineStream` (`engine_transport: bls`): a decoupled BLS call, for Tritons without that
  trap.

Both watch the engine's stub: in Triton 2.51 a request in flight in a stub that dies never gets
an answer, so a stream silent for `SILENCE_S` whose engine stub (a sibling process) has gone
ends with UNAVAILABLE, and the launcher's watchdog reloads the engine.

Both put the engine's responses (or an exception) on one queue; `next` merges what is queued
(a reader that fell behind catches up in one step). Stopping keeps TensorRT-LLM's convention:
a second request with the same request id and `stop` true; the engine then ends the first
request with its final, `cancelled`, response.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from uip.core.faults import is_unavailable
from uip.core.stubs import StubCensus
from uip.llm.engine_tensors import RESPONSE_OUTPUTS, EngineChunk, decode_response, encode_stop
from uip.llm.orchestrate import EngineStreamError
from uip.triton import pb

DEFAULT_URL = "localhost:8001"
URL_ENV = "UIP_GRPC_URL"  # set by `uip serve` to the server's own gRPC address
_END = object()  # the transport's stream ended
SILENCE_S = 1.0  # a stream silent this long checks that its engine's stub is alive
_census: StubCensus | None = None


def _stubs() -> StubCensus:
    """The stubs of the server this stub runs in (its parent process)."""
    global _census
    if _census is None:
        _census = StubCensus(os.getppid())
    return _census


def engine_url(configured: str = "") -> str:
    """The spec's `engine_url`, else $UIP_GRPC_URL, else Triton's default gRPC address."""
    return configured or os.environ.get(URL_ENV) or DEFAULT_URL


class _QueuedStream:
    """What both transports share: a response queue read by the request's own thread."""

    def __init__(self, model: str, inputs: dict[str, np.ndarray], request_id: str):
        self.model = model
        self.inputs = inputs
        self.request_id = request_id
        self.queue: queue.Queue = queue.Queue()
        self.ended = False  # the engine's final response (or an error) was seen
        self._stopped = False
        self._held: object = None
        self._engine_pids = _stubs().pids(model)  # empty when the engine runs elsewhere
        self._heard = time.monotonic()

    def _check_engine(self) -> None:
        """Raise UNAVAILABLE when a stub of the engine that took this request has died."""
        if not self._engine_pids or time.monotonic() - self._heard < SILENCE_S:
            return
        if self._engine_pids - _stubs().pids(self.model):
            self.ended = True
            message = (f"{self.model}'s stub process died with this request in flight; the "
                       "model is being reloaded")
            raise EngineStreamError(message, pb.triton_error(message, "UNAVAILABLE"))

    def _decode(self, item: object) -> EngineChunk | None:
        """A queued response as a chunk (None: nothing in it); raises for an error."""
        raise NotImplementedError

    def _get(self, timeout: float | None) -> object:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self.queue.get(timeout=timeout) if timeout is not None else self.queue.get_nowait()

    def next(self, timeout: float) -> EngineChunk | None:
        if self.ended:
            return None
        try:
            item = self._get(timeout)
        except queue.Empty:
            self._check_engine()
            return None
        self._heard = time.monotonic()
        try:
            chunk = self._decode(item)
        except EngineStreamError:
            self.ended = True  # an error is the engine's last word
            raise
        if chunk is None:
            return None
        while not chunk.final:
            try:
                item = self._get(None)
            except queue.Empty:
                break
            try:
                more = self._decode(item)
            except EngineStreamError:
                self._held = item  # reported by the next call
                break
            if more is not None:
                chunk = EngineChunk(chunk.tokens + more.tokens, more.finish_reason)
        if chunk.final:
            self.ended = True
        return chunk

    def _send_stop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._send_stop()


class GrpcEngineStream(_QueuedStream):
    """One llm_engine request over its own gRPC stream."""

    def __init__(self, url: str, model: str, inputs: dict[str, np.ndarray], request_id: str):
        super().__init__(model, inputs, request_id)
        self.url = url
        self._client: grpcclient.InferenceServerClient | None = None

    def _on_result(self, result, error) -> None:
        self.queue.put(error if error is not None else result)

    def _send(self, inputs: dict[str, np.ndarray]) -> None:
        self._client.async_stream_infer(
            self.model, infer_inputs(inputs), request_id=self.request_id,
            outputs=[grpcclient.InferRequestedOutput(n) for n in RESPONSE_OUTPUTS])

    def start(self) -> None:
        try:
            self._client = grpcclient.InferenceServerClient(self.url)
            self._client.start_stream(callback=self._on_result)
            self._send(self.inputs)
        except Exception as exc:  # noqa: BLE001 - e.g. a wrong engine_url
            self.close()
            message = (f"cannot reach {self.model} at {self.url} (set the spec's engine_url or "
                       f"${URL_ENV}): {exc}")
            raise EngineStreamError(message, pb.triton_error(message, "UNAVAILABLE")) from exc

    def _decode(self, item: object) -> EngineChunk:
        if isinstance(item, Exception):  # keeps the engine's code; a dead engine: UNAVAILABLE
            message = f"{self.model}: {item.message() if hasattr(item, 'message') else item}"
            status = str(item.status()) if hasattr(item, "status") else "INTERNAL"
            raise EngineStreamError(message, pb.triton_error(message, status or "INTERNAL"))
        return to_chunk(item)

    def _send_stop(self) -> None:
        if self._client is not None:
            self._send(encode_stop(self.inputs))

    def close(self) -> None:
        """End the stream (cancelling whatever is still in flight on it)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.stop_stream(cancel_requests=True)
            finally:
                client.close()


def infer_inputs(inputs: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, value in inputs.items():
        t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        t.set_data_from_numpy(value)
        out.append(t)
    return out


def to_chunk(result) -> EngineChunk:
    return decode_response(result.as_numpy("output_ids"), result.as_numpy("finish_reason"))


class BlsEngineStream(_QueuedStream):
    """One llm_engine request through a decoupled BLS call."""

    def _request(self, inputs: dict[str, np.ndarray]):
        return pb.pb_utils.InferenceRequest(
            model_name=self.model, inputs=[pb.tensor(k, v) for k, v in inputs.items()],
            requested_output_names=list(RESPONSE_OUTPUTS), request_id=self.request_id)

    def start(self) -> None:
        responses = self._request(self.inputs).exec(decoupled=True)
        threading.Thread(target=self._pump, args=(responses,), daemon=True,
                         name=f"uip-bls-{self.request_id[-8:]}").start()

    def _pump(self, responses) -> None:
        """Only waits for responses; everything else happens in the request's thread."""
        try:
            for resp in responses:
                self.queue.put(resp)
        except Exception as exc:  # noqa: BLE001 - surfaces as the client's error
            self.queue.put(EngineStreamError(f"{self.model}: {type(exc).__name__}: {exc}"))
        finally:
            self.queue.put(_END)

    def _decode(self, item: object) -> EngineChunk | None:
        if item is _END:
            raise EngineStreamError(f"{self.model} ended the stream without a final response")
        if isinstance(item, EngineStreamError):
            raise item
        if item.has_error():
            err = item.error()
            if is_unavailable(err.message()):
                err = pb.triton_error(err.message(), "UNAVAILABLE")
            raise EngineStreamError(err.message(), err)
        ids = pb.output(item, "output_ids")
        if ids is None:  # a response carrying only the FINAL flag
            return None
        return decode_response(ids, pb.output(item, "finish_reason"))

    def _send_stop(self) -> None:
        for resp in self._request(encode_stop(self.inputs)).exec(decoupled=True):
            if resp.has_error():
                pb.log.warning("llm_bls: stopping %s failed: %s", self.request_id,
                               resp.error().message())

    def close(self) -> None:
        """Nothing to release: the response iterator ends with the engine's final response."""
