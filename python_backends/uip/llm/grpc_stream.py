"""llm_engine through the server's own gRPC endpoint (an `EngineStream` for llm_bls).

Why not a decoupled BLS call: Triton 2.51's Python stub builds every decoupled BLS response's
numpy arrays on its queue-monitor thread without holding the GIL
(`Stub::ProcessBLSResponseDecoupled`). With other Python threads running, as in a model that
serves many streams at once, that corrupts the interpreter's allocator: seen as segfaults in
`_PyObject_Malloc` within seconds of 8 concurrent llm_bls streams. A gRPC stream to the same
server keeps every Python object on threads that hold the GIL, and its cancellation reaches
llm_engine as a real client cancel.

Stopping keeps TensorRT-LLM's convention (and BLS's behaviour): a second request on the same
stream with the same request id and `stop` true; the engine then ends the first request with
its final, `cancelled`, response.
"""

from __future__ import annotations

import os
import queue

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from uip.llm.orchestrate import ENGINE_OUTPUTS, EngineChunk, EngineError, stop_inputs

DEFAULT_URL = "localhost:8001"
URL_ENV = "UIP_GRPC_URL"  # set by `uip serve` to the server's own gRPC address


def engine_url(configured: str = "") -> str:
    """The spec's `engine_url`, else $UIP_GRPC_URL, else Triton's default gRPC address."""
    return configured or os.environ.get(URL_ENV) or DEFAULT_URL


def infer_inputs(inputs: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, value in inputs.items():
        t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        t.set_data_from_numpy(value)
        out.append(t)
    return out


def to_chunk(result) -> EngineChunk:
    return EngineChunk.from_outputs(result.as_numpy("output_ids"),
                                    result.as_numpy("finish_reason"))


class GrpcEngineStream:
    """One llm_engine request over its own gRPC stream."""

    def __init__(self, url: str, model: str, inputs: dict[str, np.ndarray], request_id: str):
        self.url = url
        self.model = model
        self.inputs = inputs
        self.request_id = request_id
        self.queue: queue.Queue = queue.Queue()
        self.ended = False  # the engine's final response (or an error) was seen
        self._stopped = False
        self._held: Exception | None = None
        self._client: grpcclient.InferenceServerClient | None = None

    def _on_result(self, result, error) -> None:
        self.queue.put(error if error is not None else result)

    def _send(self, inputs: dict[str, np.ndarray]) -> None:
        self._client.async_stream_infer(
            self.model, infer_inputs(inputs), request_id=self.request_id,
            outputs=[grpcclient.InferRequestedOutput(n) for n in ENGINE_OUTPUTS])

    def start(self) -> None:
        try:
            self._client = grpcclient.InferenceServerClient(self.url)
            self._client.start_stream(callback=self._on_result)
            self._send(self.inputs)
        except Exception as exc:  # noqa: BLE001 - e.g. a wrong engine_url
            self.close()
            raise EngineError(f"cannot reach {self.model} at {self.url} (set the spec's "
                              f"engine_url or ${URL_ENV}): {exc}") from exc

    def next(self, timeout: float) -> EngineChunk | None:
        """The next chunk: every response already queued, merged (so a reader that fell
        behind catches up in one step), None on timeout."""
        if self.ended:
            return None
        try:
            item = self._held if self._held is not None else self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        self._held = None
        if isinstance(item, Exception):
            self.ended = True
            raise EngineError(f"{self.model}: {getattr(item, 'message', lambda: item)()}")
        chunk = to_chunk(item)
        while not chunk.final:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Exception):
                self._held = item  # reported by the next call
                break
            more = to_chunk(item)
            chunk = EngineChunk(chunk.tokens + more.tokens, more.finish_reason)
        if chunk.final:
            self.ended = True
        return chunk

    def stop(self) -> None:
        if self._stopped or self._client is None:
            return
        self._stopped = True
        self._send(stop_inputs(self.inputs))

    def close(self) -> None:
        """End the stream (cancelling whatever is still in flight on it)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.stop_stream(cancel_requests=True)
            finally:
                client.close()
