"""The two ways llm_bls reaches llm_engine.

- `GrpcEngineMux` (`engine_transport: grpc`, the default): the server's own gRPC endpoint,
  ONE connection and ONE bidirectional `ModelStreamInfer` stream for every llm_bls request,
  multiplexed by Triton request id (the server echoes the id on every response, error ones
  included). Why not a decoupled BLS call: Triton 2.51's Python stub builds every decoupled BLS
  response's numpy arrays on its queue-monitor thread without holding the GIL
  (`Stub::ProcessBLSResponseDecoupled`). With other Python threads running, as in a model that
  serves many streams at once, that corrupts the interpreter's allocator: seen as segfaults in
  `_PyObject_Malloc` within seconds of 8 concurrent llm_bls streams. A gRPC stream keeps every
  Python object on threads that hold the GIL. Why not tritonclient's stream
  (`InferenceServerClient.start_stream`): its callback gets an error response as an
  `InferenceServerException` without the request id, so one stream could not carry many
  requests; the mux uses tritonclient's generated stub and reads `error_message` together with
  `infer_response.id` itself. Its threads, whatever the number of requests: one reader, and
  gRPC's own (two Python threads, a timer, a lifeguard and its EventEngine pool of
  clamp(cores, 4, 16) threads; 15 threads in all in the llm_bls stub on a 2-core machine).
- `BlsEngineStream` (`engine_transport: bls`): one decoupled BLS call per request, an
  `EngineStream` (uip.llm.orchestrate) driven by `run` on a thread of its own, for Tritons
  without that trap (so it keeps a thread per request).

Stopping keeps TensorRT-LLM's convention: a second request with the same request id and `stop`
true; the engine then ends the first request with its final, `cancelled`, response (and
answers the stop request with one more final, empty, `cancelled` response of the same id).

Server faults are UNAVAILABLE for the client (retry), never a client error: a broken stream,
an unreachable engine, and a dead engine stub. In Triton 2.51 a request in flight in a stub
that dies never gets an answer, so the mux watches the engine's stub processes (siblings of
this stub) while requests are in flight: when one has gone, those requests end with
UNAVAILABLE and the launcher's watchdog reloads the engine.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils as grpc_utils
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype

from uip.core.faults import is_unavailable
from uip.core.stubs import StubCensus
from uip.llm.engine_tensors import RESPONSE_OUTPUTS, EngineChunk, decode_response, encode_stop
from uip.llm.orchestrate import EngineStreamError
from uip.triton import pb

DEFAULT_URL = "localhost:8001"
URL_ENV = "UIP_GRPC_URL"  # set by `uip serve` to the server's own gRPC address
_END = object()  # the transport's stream ended
_census: StubCensus | None = None


def _stubs() -> StubCensus:
    """The stub processes of the server this stub runs in (its parent process)."""
    global _census
    if _census is None:
        _census = StubCensus(os.getppid())
    return _census


def _unavailable(message: str) -> EngineStreamError:
    return EngineStreamError(message, pb.triton_error(message, "UNAVAILABLE"))


def engine_url(configured: str = "") -> str:
    """The spec's `engine_url`, else $UIP_GRPC_URL, else Triton's default gRPC address."""
    return configured or os.environ.get(URL_ENV) or DEFAULT_URL


class _Call:
    """One `ModelStreamInfer` call: its request queue, its responses and the request ids that
    went out on it and are not finished yet."""

    def __init__(self, stub):
        self.requests: queue.Queue = queue.Queue()  # None ends the request stream
        self.inflight: set[str] = set()
        self.broken = False
        self.engine_pids: set[int] = set()  # the engine's stubs when the stream was last idle
        self.responses = stub.ModelStreamInfer(iter(self.requests.get, None))
        self.reader: threading.Thread | None = None


class GrpcEngineMux:
    """Every llm_bls request over ONE gRPC connection and ONE bidirectional stream to llm_engine.

    `submit(tid, inputs)` sends a request with Triton request id `tid`; `stop(tid, inputs)` its
    stop request (same id); `finish(tid)` forgets it. The reader thread calls
    `on_event(tid, item)` once per response, with an `EngineChunk` or an `EngineStreamError`
    (the engine's error message; Triton's gRPC stream carries no status code). If the stream
    breaks (server gone, connection lost, unreachable address) every request still registered
    on it gets an `EngineStreamError` naming the cause (so no client hangs), and the next
    `submit` opens a new channel and stream.
    """

    def __init__(self, url: str, model: str,
                 on_event: Callable[[str, EngineChunk | EngineStreamError], None]):
        self.url = url
        self.model = model
        self.on_event = on_event
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._call: _Call | None = None
        self._closed = False

    def _request(self, tid: str, inputs: dict[str, np.ndarray]):
        return grpc_utils._get_inference_request(
            model_name=self.model, inputs=infer_inputs(inputs), model_version="", request_id=tid,
            outputs=[grpcclient.InferRequestedOutput(n) for n in RESPONSE_OUTPUTS],
            sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
            parameters=None)

    def _open(self) -> _Call:
        """A new stream (and channel); under the lock."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.url)
        call = _Call(service_pb2_grpc.GRPCInferenceServiceStub(self._channel))
        call.engine_pids = _stubs().pids(self.model)  # empty when the engine runs elsewhere
        call.reader = threading.Thread(target=self._read, args=(call,), daemon=True,
                                       name="uip-llm-bls-grpc")
        call.reader.start()
        return call

    def submit(self, tid: str, inputs: dict[str, np.ndarray]) -> None:
        try:
            request = self._request(tid, inputs)
            with self._lock:
                if self._closed:
                    raise RuntimeError("llm_bls is shutting down")
                if self._call is None or self._call.broken:
                    self._call = self._open()
                elif not self._call.inflight or not self._call.engine_pids:
                    # the engine may have been reloaded while this stream was idle
                    self._call.engine_pids = _stubs().pids(self.model)
                self._call.inflight.add(tid)
                self._call.requests.put(request)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed engine_url
            raise _unavailable(f"cannot reach {self.model} at {self.url} (set the spec's "
                               f"engine_url or ${URL_ENV}): {exc}") from exc

    def stop(self, tid: str, inputs: dict[str, np.ndarray]) -> None:
        """Send `tid`'s stop request, unless its stream broke (then it is over already)."""
        request = self._request(tid, encode_stop(inputs))
        with self._lock:
            call = self._call
            if call is not None and not call.broken and tid in call.inflight:
                call.requests.put(request)

    def finish(self, tid: str) -> None:
        with self._lock:
            if self._call is not None:
                self._call.inflight.discard(tid)

    def check_engine(self) -> None:
        """End the requests in flight with UNAVAILABLE when a stub of the engine that took
        them has died (Triton 2.51 would never answer them); the next submit reconnects."""
        with self._lock:
            call = self._call
        if call is None or call.broken or not call.inflight or not call.engine_pids:
            return
        if call.engine_pids - _stubs().pids(self.model):
            self._broken(call, f"{self.model}'s stub process died with requests in flight; the "
                         "model is being reloaded")
            call.responses.cancel()

    def inflight(self) -> int:
        with self._lock:
            return 0 if self._call is None else len(self._call.inflight)

    def _read(self, call: _Call) -> None:
        """The reader thread: every response of `call` to `on_event`, then its end."""
        reason = "the server ended the stream"
        try:
            for resp in call.responses:
                tid = resp.infer_response.id
                if resp.error_message:
                    item: EngineChunk | EngineStreamError = EngineStreamError(
                        f"{self.model}: {resp.error_message}")
                else:
                    try:
                        item = to_chunk(grpcclient.InferResult(resp.infer_response))
                    except Exception as exc:  # noqa: BLE001 - that request fails, not the stream
                        item = EngineStreamError(f"{self.model}: unreadable response: {exc}")
                self.on_event(tid, item)
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - reported to every request on the stream
            reason = f"{type(exc).__name__}: {exc}"
        self._broken(call, reason)

    def _broken(self, call: _Call, reason: str) -> None:
        with self._lock:
            call.broken = True
            call.requests.put(None)  # ends gRPC's request-iterator thread
            tids, call.inflight = sorted(call.inflight), set()
            channel = None
            if self._call is call:
                self._call = None
                channel, self._channel = self._channel, None  # reconnect from scratch
            closed = self._closed
        if channel is not None:
            channel.close()
        if closed:
            return
        if tids:
            pb.log.warning("llm_bls: the gRPC stream to %s at %s broke (%s); failing %d "
                           "request(s)", self.model, self.url, reason, len(tids))
        for tid in tids:
            self.on_event(tid, _unavailable(
                f"the gRPC stream to {self.model} at {self.url} broke ({reason}); if the "
                f"address is wrong, set the spec's engine_url or ${URL_ENV}"))

    def close(self) -> None:
        """Cancel the stream (and whatever is in flight on it); no events follow."""
        with self._lock:
            self._closed = True
            call, self._call = self._call, None
            channel, self._channel = self._channel, None
        if call is not None:
            call.requests.put(None)
            call.responses.cancel()
            if call.reader is not None and call.reader is not threading.current_thread():
                call.reader.join(timeout=2)
        if channel is not None:
            channel.close()


def infer_inputs(inputs: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, value in inputs.items():
        t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        t.set_data_from_numpy(value)
        out.append(t)
    return out


def to_chunk(result) -> EngineChunk:
    return decode_response(result.as_numpy("output_ids"), result.as_numpy("finish_reason"))


class BlsEngineStream:
    """One llm_engine request through a decoupled BLS call; its responses go to a queue read
    by the request's own thread (`next` merges what is queued)."""

    def __init__(self, model: str, inputs: dict[str, np.ndarray], request_id: str):
        self.model = model
        self.inputs = inputs
        self.request_id = request_id
        self.queue: queue.Queue = queue.Queue()
        self.ended = False  # the engine's final response (or an error) was seen
        self._stopped = False
        self._held: object = None

    def _get(self, timeout: float | None) -> object:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self.queue.get(timeout=timeout) if timeout is not None else self.queue.get_nowait()

    def next(self, timeout: float) -> EngineChunk | None:
        if self.ended:
            return None
        try:
            chunk = self._decode(self._get(timeout))
        except queue.Empty:
            return None
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

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._send_stop()

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
