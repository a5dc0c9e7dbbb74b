"""Triton as the gateway's client sees it: gRPC (tritonclient.grpc.aio), errors mapped to HTTP.

One channel per gateway process. `stream` reads a decoupled model's responses and cancels the
gRPC call (Triton cancels the request, llm_bls frees its engine slot) when the consumer stops
early: a client that disconnects, a timeout, an error.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import KeepAliveOptions, service_pb2
from tritonclient.utils import InferenceServerException

from uip.gateway.errors import ApiError

# gRPC status -> HTTP status of the gateway's answer
STATUS = {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400,
          "NOT_FOUND": 404, "UNIMPLEMENTED": 404, "RESOURCE_EXHAUSTED": 429,
          "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "CANCELLED": 503}
# Triton 2.51's stream responses carry no status code: infer one from the message
_UNAVAILABLE_HINTS = ("not healthy", "unavailable", "not ready", "unknown model",
                      "failed to connect", "shutting down")


def api_error(e: InferenceServerException, model: str) -> ApiError:
    code = str(e.status() or "").removeprefix("StatusCode.")
    message = e.message() or str(e)
    status = STATUS.get(code)
    if status is None:
        unavailable = any(h in message.lower() for h in _UNAVAILABLE_HINTS)
        # no code (a stream error): our models answer bad input this way, unless it says
        # the model is unavailable; INTERNAL/UNKNOWN: the server failed, not the client
        status = 503 if unavailable or code else 400
    if status == 404:  # the model id was valid for the gateway: Triton lacks it now
        status = 503
    return ApiError(status, f"{model}: {message}", code=code.lower() or "model_error")


_SCALAR = {"BOOL": "?", "INT8": "<b", "INT16": "<h", "INT32": "<i", "INT64": "<q",
           "UINT8": "<B", "UINT16": "<H", "UINT32": "<I", "UINT64": "<Q", "FP32": "<f",
           "FP64": "<d"}


def first_values(response) -> dict[str, Any]:
    """name -> the first element of each output of a ModelInferResponse (str for BYTES,
    a Python number otherwise); empty outputs are left out. The LLM's outputs are scalars
    per response: read straight from the raw contents (Triton's BYTES layout: a 4-byte
    little-endian length, then the bytes), which costs a fraction of `as_numpy` per token."""
    raws = response.raw_output_contents
    out: dict[str, Any] = {}
    for i, o in enumerate(response.outputs):
        raw = raws[i] if i < len(raws) else b""
        if o.datatype == "BYTES":
            if len(raw) >= 4:
                n = int.from_bytes(raw[:4], "little")
                out[o.name] = raw[4:4 + n].decode("utf-8", "replace")
        elif raw and o.datatype in _SCALAR:
            out[o.name] = struct.unpack_from(_SCALAR[o.datatype], raw)[0]
    return out


RECONNECT_MAX_S = 1.0


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options (messages of any size, its keepalive defaults), and
    a reconnect backoff of at most RECONNECT_MAX_S: gRPC's default grows to 2 minutes while
    Triton is not up yet (`uip serve` starts the gateway beside a starting tritonserver), and
    a channel in backoff fails its calls at once (503). Each worker has a channel of its own,
    so every one of them reaches Triton within a second of it listening."""
    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(RECONNECT_MAX_S * 1000))]


class Triton:
    def __init__(self, url: str):
        self.url = url
        self.client = grpcaio.InferenceServerClient(url, channel_args=channel_args())
        self._pending: set[asyncio.Future] = set()  # unary requests still running
        # Triton's bidirectional ModelStreamInfer called as unary -> stream, on the client's
        # channel: the same frames on the wire as one request written and the writing side
        # closed (what tritonclient's stream_infer does), but grpc.aio sends the request
        # with the call's headers in its first step instead of after two more turns of the
        # event loop (waiting for the headers' completion, then the write).
        self._one_request = self.client._channel.unary_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=30)
        await self.client.close()

    async def ready_models(self, names) -> set[str]:
        """Those of `names` that are READY (none when Triton is unreachable). Through the
        health API, which stays open when the repository API needs the admin key."""
        names = list(names)

        async def ready(name: str) -> bool:
            try:
                return bool(await self.client.is_model_ready(name))
            except InferenceServerException:
                return False

        flags = await asyncio.gather(*(ready(n) for n in names))
        return {n for n, ok in zip(names, flags, strict=True) if ok}

    async def infer(self, model: str, inputs: list, timeout_s: float) -> grpcaio.InferResult:
        """One request. It is never cancelled once sent (a timeout or a client that leaves
        answers without waiting for it): cancelling an in-flight request of a BLS
        orchestrator (stable_diffusion) crashed its Triton 2.51 stub."""
        task = asyncio.ensure_future(self.client.infer(model, inputs))
        self._pending.add(task)
        task.add_done_callback(self._settled)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except InferenceServerException as e:
            raise api_error(e, model) from None
        except TimeoutError:
            raise ApiError(504, f"{model}: no answer within {timeout_s:g} s") from None

    def _settled(self, task: asyncio.Future) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an answer nobody waits for any more is dropped

    def stream(self, request, timeout_s: float) -> ResponseStream:
        """The responses of one `ModelInferRequest` (uip.clients.llm.grpc_request) on a gRPC
        stream of its own. The call is made now: its request goes out on the event loop's
        next turn, before anything iterates it."""
        return ResponseStream(self._one_request(request, timeout=timeout_s), request.model_name)


class ResponseStream:
    """Each response's outputs (the first element of each, see `first_values`) until the
    stream ends. An error or a cancellation while reading, or closing it before the end,
    cancels the request (Triton cancels it, llm_bls frees its engine slot)."""

    def __init__(self, call, model: str):
        self._call, self._model, self._open = call, model, True

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._open = False
                    raise StopAsyncIteration
                if response.error_message:
                    raise api_error(InferenceServerException(msg=response.error_message),
                                    self._model)
                outputs = first_values(response.infer_response)
                if outputs:
                    return outputs
        except StopAsyncIteration:
            raise
        except grpc.RpcError as e:  # the stream's own errors (unavailable, deadline, ...)
            self.cancel()
            raise api_error(InferenceServerException(e.details(), str(e.code())),
                            self._model) from None
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()
