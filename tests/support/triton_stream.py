"""A stand-in for the gRPC call under `uip.gateway.triton.Triton.stream` (no server): it
answers `read()` with llm_bls-shaped ModelStreamInferResponses built from output dicts, and
records `cancel()`."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import grpc
from tritonclient.grpc import service_pb2

from uip.gateway import triton

_SCALAR = {"num_output_tokens": ("INT32", "<i"), "num_input_tokens": ("INT32", "<i")}


def response(outputs: dict | None = None, error: str = "") -> service_pb2.ModelStreamInferResponse:
    r = service_pb2.ModelStreamInferResponse(error_message=error)
    for name, value in (outputs or {}).items():
        o = r.infer_response.outputs.add(name=name, shape=[1, 1])
        if name in _SCALAR:
            o.datatype, fmt = _SCALAR[name]
            r.infer_response.raw_output_contents.append(struct.pack(fmt, value))
        else:
            o.datatype = "BYTES"
            data = str(value).encode()
            r.infer_response.raw_output_contents.append(struct.pack("<I", len(data)) + data)
    return r


class FakeCall:
    """`read()` takes the next item of `script` (an async iterator of responses; its end is
    the stream's end); `cancelled` counts `cancel()`."""

    def __init__(self, script: AsyncIterator):
        self._script, self.cancelled = script, 0

    async def read(self):
        try:
            return await anext(self._script)
        except StopAsyncIteration:
            return grpc.aio.EOF

    def cancel(self) -> bool:
        self.cancelled += 1
        return True


def patch(monkeypatch, script: Callable[[service_pb2.ModelInferRequest], AsyncIterator],
          calls: list | None = None) -> None:
    """Triton.stream over FakeCall(script(request)); each call is appended to `calls`."""
    def stream(self, request, timeout_s):
        call = FakeCall(script(request))
        if calls is not None:
            calls.append((request, call))
        return triton.ResponseStream(call, request.model_name)

    monkeypatch.setattr(triton.Triton, "stream", stream)


async def outputs(*items: dict) -> AsyncIterator:
    """A script of llm_bls's responses, one per dict."""
    for item in items:
        yield response(item)
        await asyncio.sleep(0)
