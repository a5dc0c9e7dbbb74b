"""Clients of the `llm` / `llm_bls` contract: HTTP generate, SSE generate_stream, gRPC streams.

Used by `uip generate`, the benchmarks and the tests. Each call returns a `Generation` (the
text, the deltas as they arrived, finish reason, token counts); `on_delta` is called with each
text delta as it arrives.
"""

from __future__ import annotations

import json
import queue
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uip.clients.tensors import grpc_input

DeltaFn = Callable[[str], None]

# contract input -> (dtype of the gRPC tensor, holds a list)
INPUTS: dict[str, tuple[Any, bool]] = {
    "max_tokens": (np.int32, False),
    "stream": (bool, False),
    "temperature": (np.float32, False),
    "top_p": (np.float32, False),
    "top_k": (np.int32, False),
    "seed": (np.uint64, False),
    "stop_words": (object, True),
    "bad_words": (object, True),
    "exclude_input_in_output": (bool, False),
    "return_num_input_tokens": (bool, False),
    "return_num_output_tokens": (bool, False),
    "lora_name": (object, True),  # one adapter name, BYTES [1]
    "guided_decoding": (object, True),  # one JSON string (uip.llm.guided): shape [1, 1]
}


class GenerateError(RuntimeError):
    """The server refused or failed the request; `status` is the HTTP code or gRPC status."""

    def __init__(self, message: str, status: Any = None):
        super().__init__(message)
        self.status = status

    @property
    def invalid_argument(self) -> bool:
        return self.status in (400, "StatusCode.INVALID_ARGUMENT")


@dataclass
class Generation:
    deltas: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None  # summed over the responses of a stream
    responses: int = 0

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def add(self, outputs: dict[str, Any], on_delta: DeltaFn | None = None) -> None:
        """Take one response's outputs (text_output, finish_reason, num_*_tokens)."""
        self.responses += 1
        text = _scalar(outputs.get("text_output"))
        if text is not None:
            text = text.decode() if isinstance(text, bytes) else str(text)
            self.deltas.append(text)
            if on_delta is not None and text:
                on_delta(text)
        reason = _scalar(outputs.get("finish_reason"))
        if reason:
            self.finish_reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        n_in = _scalar(outputs.get("num_input_tokens"))
        if n_in is not None:
            self.num_input_tokens = int(n_in)
        n_out = _scalar(outputs.get("num_output_tokens"))
        if n_out is not None:
            self.num_output_tokens = (self.num_output_tokens or 0) + int(n_out)


def _scalar(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.reshape(-1)[0] if value.size else None
    if isinstance(value, list):
        return _scalar(value[0]) if value else None
    return value


def parameters(max_tokens: int | None = None, **params: Any) -> dict[str, Any]:
    """The contract's optional inputs that are set (None = left out)."""
    out = {"max_tokens": max_tokens, **params}
    unknown = set(out) - set(INPUTS)
    if unknown:
        raise TypeError(f"unknown llm inputs: {sorted(unknown)}; allowed: {sorted(INPUTS)}")
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------ HTTP


def _http_body(prompt: str, params: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"text_input": prompt, **params}
    if request_id:
        body["id"] = request_id
    return body


def _http_error(resp) -> GenerateError:
    try:
        message = resp.json().get("error", resp.text)
    except ValueError:
        message = resp.text
    return GenerateError(f"HTTP {resp.status_code}: {message}", resp.status_code)


def generate_http(url: str, model: str, prompt: str, request_id: str | None = None,
                  timeout: float = 120.0, **params: Any) -> Generation:
    """One response over HTTP `generate` (`stream` false)."""
    import requests

    params = parameters(**params)
    params["stream"] = False
    resp = requests.post(f"http://{url}/v2/models/{model}/generate",
                         json=_http_body(prompt, params, request_id), timeout=timeout)
    if resp.status_code != 200:
        raise _http_error(resp)
    gen = Generation()
    gen.add(resp.json())
    return gen


def sse_events(url: str, model: str, prompt: str, request_id: str | None = None,
               timeout: float = 120.0, **params: Any) -> Iterator[dict[str, Any]]:
    """The parsed `data:` events of HTTP `generate_stream` (Server-Sent Events)."""
    import requests

    params = parameters(**params)
    params.setdefault("stream", True)
    with requests.post(f"http://{url}/v2/models/{model}/generate_stream",
                       json=_http_body(prompt, params, request_id), stream=True,
                       timeout=timeout) as resp:
        if resp.status_code != 200:
            raise _http_error(resp)
        for line in resp.iter_lines(decode_unicode=False):
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:].decode("utf-8"))
            if "error" in event:
                raise GenerateError(f"stream error: {event['error']}", 400)
            yield event


def generate_sse(url: str, model: str, prompt: str, on_delta: DeltaFn | None = None,
                 request_id: str | None = None, **params: Any) -> Generation:
    """Stream over SSE (`generate_stream`); `on_delta` sees each delta as it arrives.
    A unique request id is sent unless `request_id` is "" (the `llm` ensemble streams deltas
    only for requests with an id)."""
    if request_id is None:
        request_id = f"uip-{uuid.uuid4().hex}"
    gen = Generation()
    for event in sse_events(url, model, prompt, request_id=request_id, **params):
        gen.add(event, on_delta)
    return gen


# ------------------------------------------------------------------------------------ gRPC


def grpc_inputs(prompt: str, params: dict[str, Any]):
    """tritonclient.grpc InferInputs for one prompt (batch dimension 1)."""
    out = [grpc_input("text_input", np.array([[prompt.encode()]], dtype=object))]
    for name, value in params.items():
        dtype, is_list = INPUTS[name]
        if is_list:
            values = [value] if isinstance(value, str) else list(value)
            array = np.array([[v.encode() for v in values]], dtype=object)
        else:
            array = np.array([[value]], dtype=dtype)
        out.append(grpc_input(name, array))
    return out


# numpy dtype of INPUTS -> (Triton datatype, struct format of one element); BYTES: None
_RAW = {np.int32: ("INT32", "<i"), bool: ("BOOL", "<?"), np.float32: ("FP32", "<f"),
        np.uint64: ("UINT64", "<Q"), object: ("BYTES", None)}


def grpc_request(model: str, prompt: str, params: dict[str, Any],
                 request_id: str | None = None):
    """The gRPC `ModelInferRequest` of one prompt, built directly: the same message as
    `grpc_inputs` through tritonclient's request iterator (tested), at a fraction of its
    cost, for callers that talk to the stub themselves (the gateway)."""
    from tritonclient.grpc import service_pb2

    tensor = service_pb2.ModelInferRequest.InferInputTensor
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id or "")
    request.inputs.append(tensor(name="text_input", datatype="BYTES", shape=[1, 1]))
    request.raw_input_contents.append(_bytes_element(prompt))
    for name, value in params.items():
        dtype, is_list = INPUTS[name]
        datatype, fmt = _RAW[dtype]
        if is_list:
            values = [value] if isinstance(value, str) else list(value)
            raw = b"".join(_bytes_element(v) for v in values)
            shape = [1, len(values)]
        else:
            raw = struct.pack(fmt, value) if fmt else _bytes_element(value)
            shape = [1, 1]
        request.inputs.append(tensor(name=name, datatype=datatype, shape=shape))
        request.raw_input_contents.append(raw)
    return request


def _bytes_element(text: str) -> bytes:
    """One BYTES element in Triton's raw layout: its length (4 bytes, little-endian), then it."""
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def is_final(result) -> bool:
    """Whether a decoupled model's gRPC stream result is its request's last one."""
    if result is None:
        return False
    final = result.get_response().parameters.get("triton_final_response")
    return final is not None and final.bool_param


class GrpcStream:
    """One gRPC bidirectional stream carrying one generation; lets a caller cancel it."""

    def __init__(self, url: str, model: str, prompt: str, request_id: str | None = None,
                 **params: Any):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.request_id = request_id or f"uip-{uuid.uuid4().hex}"
        params = parameters(**params)
        params.setdefault("stream", True)
        self.inputs = grpc_inputs(prompt, params)
        self.events: queue.Queue = queue.Queue()
        self.closed = False

    def _callback(self, result, error) -> None:
        self.events.put((result, error))

    def start(self) -> GrpcStream:
        self.client.start_stream(callback=self._callback)
        self.client.async_stream_infer(self.model, self.inputs, request_id=self.request_id,
                                       enable_empty_final_response=True)
        return self

    def responses(self, timeout: float = 120.0) -> Iterator[dict[str, Any]]:
        """Each response's outputs until the final one; raises GenerateError on an error."""
        while True:
            try:
                result, error = self.events.get(timeout=timeout)
            except queue.Empty:
                raise GenerateError(f"no response within {timeout} s") from None
            if error is not None:
                raise GenerateError(str(error), getattr(error, "status", lambda: None)())
            outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
            if outputs:
                yield outputs
            if is_final(result):
                return

    def cancel(self) -> None:
        """Cancel the request (gRPC cancellation reaches the model) and close the stream."""
        if not self.closed:
            self.closed = True
            self.client.stop_stream(cancel_requests=True)
            self.client.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.stop_stream()
            self.client.close()

    def __enter__(self) -> GrpcStream:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or a timeout the server may still hold the request: cancel it, as a
        # plain stop_stream() would wait for its end.
        if exc_type is not None:
            self.cancel()
        else:
            self.close()


def generate_grpc(url: str, model: str, prompt: str, on_delta: DeltaFn | None = None,
                  request_id: str | None = None, timeout: float = 120.0,
                  **params: Any) -> Generation:
    """Stream over gRPC (`stream` defaults to true; false gives one response)."""
    gen = Generation()
    with GrpcStream(url, model, prompt, request_id=request_id, **params) as stream:
        for outputs in stream.responses(timeout):
            gen.add(outputs, on_delta)
    return gen


PROTOCOLS = {"http": generate_http, "sse": generate_sse, "grpc": generate_grpc}


def generate(protocol: str, url: str, model: str, prompt: str, on_delta: DeltaFn | None = None,
             **params: Any) -> Generation:
    """`protocol` is http (one response), sse or grpc (streams)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if protocol == "http":
        gen = generate_http(url, model, prompt, **params)
        if on_delta is not None and gen.text:
            on_delta(gen.text)
        return gen
    return PROTOCOLS[protocol](url, model, prompt, on_delta=on_delta, **params)
