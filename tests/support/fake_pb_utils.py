"""A stand-in for `triton_python_backend_utils`, the module Triton's Python stub provides, so the
Triton ring's adapters run in unit tests without a server (as TensorRT-LLM's backend tests do).

`install()` puts it into `sys.modules`; requests, senders and BLS calls are plain objects the
tests build and inspect (`Request`, `Sender`, `bls_handler`)."""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Callable

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_MEMORY_GPU = 2


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, \
        CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, value: np.ndarray):
        self._name, self._value = name, np.asarray(value)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value

    def is_cpu(self) -> bool:
        return True

    @classmethod
    def from_dlpack(cls, name: str, capsule) -> Tensor:
        import torch

        return cls(name, torch.from_dlpack(capsule).cpu().numpy())


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def outputs(self) -> dict[str, np.ndarray]:
        """Test helper: the outputs by name."""
        return {t.name(): t.as_numpy() for t in self._outputs}


def get_input_tensor_by_name(request, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


class Sender:
    """A decoupled model's response sender; records (response, flags)."""

    def __init__(self, cancelled: Callable[[], bool] = lambda: False):
        self.sent: list[tuple[InferenceResponse, int]] = []
        self._cancelled = cancelled

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return self._cancelled()

    @property
    def finished(self) -> bool:
        return any(f & TRITONSERVER_RESPONSE_COMPLETE_FINAL for _, f in self.sent)


class Request:
    """An inference request as a model's `execute` sees it."""

    def __init__(self, inputs: dict[str, np.ndarray], request_id: str = "",
                 cancelled: bool = False, requested: tuple[str, ...] = ()):
        self._inputs = [Tensor(k, v) for k, v in inputs.items()]
        self._id = request_id
        self._requested = list(requested)  # empty: the client named none (it gets all)
        self.cancelled = cancelled
        self.sender = Sender(lambda: self.cancelled)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def requested_output_names(self) -> list[str]:
        return self._requested

    def is_cancelled(self) -> bool:
        return self.cancelled

    def get_response_sender(self) -> Sender:
        return self.sender


# BLS: `bls_handler(request) -> InferenceResponse | list[InferenceResponse]` answers every call
bls_handler: Callable | None = None


class InferenceRequest:
    def __init__(self, model_name: str, inputs: list[Tensor], requested_output_names: list[str],
                 request_id: str = "", preferred_memory=None, **_):
        self.model_name = model_name
        self._inputs = inputs
        self.requested_output_names = requested_output_names
        self._id = request_id

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def exec(self, decoupled: bool = False):
        if bls_handler is None:
            raise RuntimeError("fake_pb_utils.bls_handler is not set")
        out = bls_handler(self)
        if not decoupled:
            return out
        # decoupled: an iterator over the responses (a handler may give a generator, which
        # can raise mid-stream as Triton's ResponseIterator does)
        return iter([out] if isinstance(out, InferenceResponse) else out)


class PreferredMemory:
    def __init__(self, kind: int, device_id: int = 0):
        self.kind, self.device_id = kind, device_id


class _Metric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None):
        self.labels, self.value, self.buckets = labels, 0.0, buckets
        self.observed: list[float] = []

    def observe(self, v: float) -> None:
        self.observed.append(v)

    def set(self, v: float) -> None:
        self.value = v

    def increment(self, v: float) -> None:
        self.value += v


# every MetricFamily made, in order (test helper: what a model registered)
metric_families: list = []


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2

    def __init__(self, name: str, description: str, kind: int):
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[_Metric] = []
        metric_families.append(self)

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None  # noqa: N802
               ) -> _Metric:
        if (buckets is not None) != (self.kind == self.HISTOGRAM):
            raise ValueError("buckets are for histograms, and histograms need them")
        m = _Metric(labels, buckets)
        self.metrics.append(m)
        return m


# --- what Triton hands to `initialize` (test helpers, not pb_utils API) -----------------------


def model_args(config: dict, instance_kind: str = "CPU", device_id: int = 0) -> dict[str, str]:
    """`initialize`'s args for a model config (the dict Triton serializes as `model_config`)."""
    return {"model_config": json.dumps(config), "model_name": config.get("name", ""),
            "model_instance_kind": instance_kind, "model_instance_device_id": str(device_id),
            "model_instance_name": f"{config.get('name', '')}_0_0", "model_version": "1",
            "model_repository": ""}


def repository_config(name: str, **parameters: str) -> dict:
    """model_repository/<name>/config.pbtxt as Triton's JSON (proto field names), with
    `parameters` (key -> string_value) set or replaced."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from uip.core.paths import DEFAULT_REPOSITORY

    text = (DEFAULT_REPOSITORY / name / "config.pbtxt").read_text()
    config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                       preserving_proto_field_name=True)
    config.setdefault("parameters", {}).update(
        {k: {"string_value": v} for k, v in parameters.items()})
    return config



# --- waiting on a decoupled model's responses (test helpers, not pb_utils API) --------------

TIMEOUT_S = 10.0  # generous: only a failing test waits this long


def wait_until(cond, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def finished(request: Request) -> list[tuple[InferenceResponse, int]]:
    """Every response of a request, once its FINAL one came (and nothing followed)."""
    wait_until(lambda: request.sender.finished)
    time.sleep(0.02)  # nothing may follow the FINAL response
    return request.sender.sent


def only_error(request: Request) -> TritonError:
    """The request's one response: an error with the FINAL flag and no outputs."""
    sent = finished(request)
    assert len(sent) == 1
    resp, flags = sent[0]
    assert flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL and resp.has_error()
    assert resp.output_tensors() == []
    return resp.error()


def install() -> types.ModuleType:
    """Make `import triton_python_backend_utils` give this module."""
    mod = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = mod
    return mod
