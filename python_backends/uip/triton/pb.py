"""Adapters to `triton_python_backend_utils`; imported only inside the Python backend stub."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import triton_python_backend_utils as pb_utils

from uip.core.faults import Unavailable, is_unavailable
from uip.core.inputs import InvalidInput
from uip.core.sampler import start_from_env
from uip.triton import orphan_guard

log = logging.getLogger("uip")
orphan_guard.start()  # every adapter imports this module: the stub exits with its server
start_from_env()  # $UIP_PROFILE_DIR: sample the stub's threads
RETRY = "unavailable, retry later: "  # leads every UNAVAILABLE message
# Histogram buckets of the LLM models' time to first token / response (seconds).
TTFT_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
E2E_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]  # whole requests

# gRPC status of an error from another model (llm_bls's engine stream) -> Triton error code.
_GRPC_CODES = {
    "StatusCode.INVALID_ARGUMENT": "INVALID_ARG",
    "StatusCode.CANCELLED": "CANCELLED",
    "StatusCode.UNAVAILABLE": "UNAVAILABLE",
    "StatusCode.RESOURCE_EXHAUSTED": "UNAVAILABLE",
    "StatusCode.NOT_FOUND": "UNAVAILABLE",  # the other model is being reloaded
}


def inputs_of(request) -> dict[str, np.ndarray]:
    """Every input of a request as numpy (CPU tensors)."""
    return {t.name(): t.as_numpy() for t in request.inputs()}


def tensor(name: str, value: np.ndarray) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, value)


def error(exc: BaseException) -> pb_utils.TritonError:
    """INVALID_ARG for bad input; UNAVAILABLE for a server state worth a retry (a dead or
    reloading model, a full queue); INTERNAL (the message, never a traceback) otherwise."""
    if isinstance(exc, InvalidInput):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, Unavailable) or is_unavailable(str(exc)):
        log.warning("request refused, server unavailable: %s", exc)
        return triton_error(str(exc), "UNAVAILABLE")
    log.exception("request failed")
    return pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def triton_error(message: str, code: str = "INTERNAL") -> pb_utils.TritonError:
    """A Triton error for another model's error: `code` is a Triton code name or a gRPC
    status; a message saying the server is unavailable always becomes UNAVAILABLE."""
    code = _GRPC_CODES.get(code, code)
    if is_unavailable(message):
        code = "UNAVAILABLE"
    if code == "UNAVAILABLE" and not message.startswith(RETRY):
        message = RETRY + message  # gRPC streams carry the message only, not the code
    return pb_utils.TritonError(message, getattr(pb_utils.TritonError, code,
                                                 pb_utils.TritonError.INTERNAL))


def response(outputs: Mapping[str, np.ndarray]) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[tensor(k, v) for k, v in outputs.items()])


def error_response(exc: BaseException) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=error(exc))


def send(sender, outputs: Mapping[str, np.ndarray], final: bool = False) -> None:
    """Send one response of a decoupled model.

    The tensors stay referenced here until `send` returns: Triton 2.51's stub drops the outputs
    the client did not request with the GIL released, and if that dropped the last reference
    to a numpy array, Python's allocator would be entered without the GIL (heap corruption,
    then a segfault in `_PyObject_Malloc`; seen under concurrent streams).
    """
    tensors = [tensor(k, v) for k, v in outputs.items()]
    sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                flags=final_flag() if final else 0)
    del tensors  # only now, with the GIL held


def respond_each(requests, handle: Callable[[object], Mapping[str, np.ndarray] | object]) -> list:
    """`handle(request)` per request, in order: its outputs (a name -> array mapping) or a
    ready response; a failing request gets its own error response, the others go on."""
    out = []
    for request in requests:
        try:
            result = handle(request)
            out.append(response(result) if isinstance(result, Mapping) else result)
        except Exception as exc:  # noqa: BLE001 - every failure becomes that request's error
            out.append(error_response(exc))
    return out


def output(resp, name: str) -> np.ndarray | None:
    """A BLS response's output as numpy, None when it has no such output."""
    t = pb_utils.get_output_tensor_by_name(resp, name)
    return None if t is None else t.as_numpy()


def final_flag() -> int:
    return pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


# --- torch tensors, DLPack (GPU stays on the device), BLS and dynamic batching ---------------


def to_torch(t, device=None):
    """A pb_utils.Tensor as a torch tensor: GPU memory through DLPack (no host copy), CPU
    memory through numpy (zero copy); moved to `device` when given."""
    import torch

    if t.is_cpu():
        arr = t.as_numpy()
        out = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        out = torch.from_dlpack(t.to_dlpack())
    return out if device is None else out.to(device)


def from_torch(name: str, value) -> pb_utils.Tensor:
    """A torch tensor (or numpy array) as a pb_utils.Tensor; CUDA tensors go by DLPack."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(
                value.contiguous()))
        value = value.detach().numpy()
    return pb_utils.Tensor(name, np.ascontiguousarray(value))


class ModelCallError(RuntimeError):
    """A BLS call to another model failed."""


def infer(model: str, inputs: Mapping[str, object], outputs: list[str], device=None) -> dict:
    """BLS: call `model` with torch/numpy inputs; its outputs as torch tensors on `device`.

    On a GPU device the outputs are asked for in that GPU's memory, so tensors pass between
    models by DLPack without host copies.
    """
    kw = {}
    if device is not None and str(device).startswith("cuda"):
        index = int(str(device).partition(":")[2] or 0)
        kw["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, index)
    req = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=list(outputs),
        inputs=[from_torch(k, v) for k, v in inputs.items()], **kw,
    )
    resp = req.exec()
    if resp.has_error():
        message = f"model '{model}' failed: {resp.error().message()}"
        raise Unavailable(message) if is_unavailable(message) else ModelCallError(message)
    return {n: to_torch(pb_utils.get_output_tensor_by_name(resp, n), device) for n in outputs}


def cancelled_response(message: str = "request cancelled") -> pb_utils.InferenceResponse:
    err = pb_utils.TritonError(message, pb_utils.TritonError.CANCELLED)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def execute_batched(requests, input_names: list[str], fn: Callable[..., Mapping[str, object]],
                    device=None) -> list:
    """Dynamic batching for tensor models: the requests whose inputs have equal shapes and
    dtypes are concatenated along the batch dimension, `fn(**inputs)` runs once per such group
    and its outputs (a name -> tensor mapping) are split back per request. A failure fails
    only its group's requests."""
    import torch

    responses: list = [None] * len(requests)
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for i, request in enumerate(requests):
        try:
            tensors = {}
            for n in input_names:
                t = pb_utils.get_input_tensor_by_name(request, n)
                if t is None:
                    raise InvalidInput(f"input '{n}' is required")
                tensors[n] = to_torch(t, device)
            key = tuple((n, tuple(v.shape[1:]), v.dtype) for n, v in tensors.items())
            groups.setdefault(key, []).append((i, tensors))
        except Exception as exc:  # noqa: BLE001 - becomes this request's error
            responses[i] = error_response(exc)
    for members in groups.values():
        try:
            sizes = [m[input_names[0]].shape[0] for _, m in members]
            batch = {n: torch.cat([m[n] for _, m in members]) if len(members) > 1
                     else members[0][1][n] for n in input_names}
            outs = fn(**batch)
            parts = {n: torch.split(v, sizes) for n, v in outs.items()}
            for k, (i, _) in enumerate(members):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[from_torch(n, p[k]) for n, p in parts.items()])
        except Exception as exc:  # noqa: BLE001 - the group's requests get the error
            for i, _ in members:
                responses[i] = error_response(exc)
    return responses
