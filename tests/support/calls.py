"""One small, valid request per public model, and the status of a failed one (test support)."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from uip.clients.llm import generate_grpc
from uip.clients.sd import infer_inputs

PUBLIC = ("embedding", "llm", "llm_bls", "stable_diffusion")
CLIENT_ERRORS = (400, "StatusCode.INVALID_ARGUMENT")


def call(grpc_url: str, model: str, timeout: float = 30.0) -> None:
    """Serve one small request of `model` over gRPC; raises when it fails."""
    if model in ("llm", "llm_bls"):
        gen = generate_grpc(grpc_url, model, "hello", max_tokens=4, timeout=timeout)
        assert gen.text, f"{model}: empty generation"
        return
    client = grpcclient.InferenceServerClient(grpc_url)
    if model == "embedding":
        t = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[b"hello"]], dtype=object))
        out = client.infer("embedding", [t], client_timeout=timeout).as_numpy("embedding")
        assert out.shape == (1, 384)
        return
    inputs = infer_inputs(grpcclient, "a cat", steps=2, height=64, width=64, seed=1)
    out = client.infer(model, inputs, client_timeout=timeout).as_numpy("image")
    assert out.shape[-1] == 3


def status_of(exc: BaseException) -> object:
    """The HTTP code or gRPC status of a failed request (None when it has none)."""
    status = getattr(exc, "status", None)
    return status() if callable(status) else status


def http_status(url: str, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def model_ready(http_url: str, model: str) -> bool:
    try:
        return http_status(f"http://{http_url}/v2/models/{model}/ready") == 200
    except OSError:  # not listening (yet)
        return False
