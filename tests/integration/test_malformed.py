"""Malformed requests for every public model (and llm_engine), over gRPC and HTTP.

Cases are generated from each model's config: a missing required input, an unknown input, a
wrong dtype and a wrong shape for every input, an empty batch, and per model: huge, negative,
NaN values and invalid UTF-8. Every one must be refused as a client error with a message
(gRPC INVALID_ARGUMENT; a gRPC stream error has no code: a message that is not a server
fault's), no stub may die, the server stays healthy. HTTP adds what JSON can get wrong; the
few answers Triton's own frontend gives (500 for a wrongly typed JSON value) are listed in
FRONTEND and in the README.
"""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import live_stubs
from support.calls import PUBLIC, call, http_status
from tritonclient.utils import InferenceServerException

from uip.clients.tensors import grpc_inputs
from uip.core.paths import DEFAULT_REPOSITORY
from uip.repo.needed import read_config

MODELS = (*PUBLIC, "llm_engine")
B = np.object_
VALID = {  # a small valid request per model
    "embedding": {"text_input": np.array([[b"hi"]], B)},
    "llm": {"text_input": np.array([[b"hi"]], B), "max_tokens": np.array([[2]], np.int32)},
    "llm_bls": {"text_input": np.array([[b"hi"]], B), "max_tokens": np.array([[2]], np.int32)},
    "stable_diffusion": {"prompt": np.array([[b"a"]], B), "steps": np.array([[1]], np.int32),
                         "height": np.array([[64]], np.int32),
                         "width": np.array([[64]], np.int32)},
    "llm_engine": {"input_ids": np.array([[5, 6, 7]], np.int32),
                   "request_output_len": np.array([[2]], np.int32)},
}
TEXT = {"embedding": "text_input", "llm": "text_input", "llm_bls": "text_input",
        "stable_diffusion": "prompt"}
VALUES = {  # model -> case -> input -> value (bad values of valid dtype and shape)
    "embedding": {"huge": {"text_input": np.array([[b"x" * 2_000_000]], B)}},
    "llm": {"huge": {"max_tokens": np.array([[10**9]], np.int32)},
            "negative": {"max_tokens": np.array([[-1]], np.int32)},
            "nan": {"temperature": np.array([[np.nan]], np.float32)},
            "huge_prompt": {"text_input": np.array([["a " * 100_000]], B)},
            "bad_guide": {"guided_decoding": np.array([[b'{"type": "yaml"}']], B)}},
    "stable_diffusion": {"huge": {"steps": np.array([[10**6]], np.int32)},
                         "negative": {"height": np.array([[-8]], np.int32)},
                         "nan": {"guidance_scale": np.array([[np.nan]], np.float32)},
                         "odd_size": {"width": np.array([[65]], np.int32)}},
    "llm_engine": {"huge": {"request_output_len": np.array([[10**9]], np.int32)},
                   "negative": {"request_output_len": np.array([[-3]], np.int32)},
                   "nan": {"temperature": np.array([[np.nan]], np.float32)},
                   "bad_token": {"input_ids": np.array([[10**8]], np.int32)},
                   "bad_guide": {"guided_decoding": np.array([[b'{"type": "regex"}']], B)}},
}
VALUES["llm_bls"] = VALUES["llm"]


def _config(model: str):
    return read_config(DEFAULT_REPOSITORY / model / "config.pbtxt")


def decoupled(model: str) -> bool:
    """A decoupled model, or an ensemble with a decoupled step (`llm`)."""
    cfg = _config(model)
    return cfg.model_transaction_policy.decoupled or any(
        decoupled(s.model_name) for s in cfg.ensemble_scheduling.step)


def cases(model: str) -> dict[str, dict[str, np.ndarray]]:
    cfg, base = _config(model), VALID[model]
    out = {}
    # required: the config's, and the text input (`llm` marks it optional for Triton)
    required = {t.name for t in cfg.input if not t.optional} | {TEXT.get(model, "")} - {""}
    for name in sorted(required):
        out[f"missing_{name}"] = {k: v for k, v in base.items() if k != name}
    out["unknown_input"] = {**base, "bogus": np.array([[1]], np.int32)}
    for name, v in base.items():
        wrong = np.array([[1.5]], np.float32) if v.dtype == B else np.array([[b"1"]], B)
        out[f"dtype_{name}"] = {**base, name: wrong}
        out[f"shape_{name}"] = {**base, name: v.reshape(1, *v.shape)}
    out["empty_batch"] = {k: v[:0] for k, v in base.items()}
    for case, values in VALUES.get(model, {}).items():
        out[case] = {**base, **values}
    if model in TEXT:
        out["invalid_utf8"] = {**base, TEXT[model]: np.array([[b"\xff\xfe\xfa"]], B)}
    return out


def grpc_answer(url: str, model: str, values: dict[str, np.ndarray]) -> tuple[str, str]:
    """(status, message) of one request: "ok", a gRPC status, or "stream" (a stream error)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = grpc_inputs(values)
    except Exception as e:  # noqa: BLE001 - the client library refused to build it
        return "client", str(e)
    if not decoupled(model):
        try:
            client.infer(model, inputs, client_timeout=60)
            return "ok", ""
        except InferenceServerException as e:
            return str(e.status()), e.message() or ""
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            result, error = events.get(timeout=60)
            if error is not None:
                return "stream", error.message() if hasattr(error, "message") else str(error)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return "ok", ""
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


SERVER_FAULT = ("unavailable", "Internal", "Traceback", "not healthy")
GRPC_CASES = [(m, c) for m in MODELS for c in cases(m)]


@pytest.fixture(scope="module")
def before(server):
    return live_stubs(server), len(server.watchdog.reloads)


@pytest.mark.parametrize(("model", "case"), GRPC_CASES, ids=[f"{m}-{c}" for m, c in GRPC_CASES])
def test_grpc_malformed_is_a_client_error(server, before, model, case):
    status, message = grpc_answer(server.grpc_url, model, cases(model)[case])
    assert status in ("StatusCode.INVALID_ARGUMENT", "stream", "client"), (status, message)
    assert message, "a rejection without a message"
    assert not any(f in message for f in SERVER_FAULT), message


HTTP_BODIES = {  # (model, case) -> (route, JSON body or raw bytes, expected status)
    ("embedding", "dtype"): ("infer", {"inputs": [{"name": "text_input", "datatype": "FP32",
                                                   "shape": [1, 1], "data": [1.0]}]}, 400),
    ("embedding", "shape"): ("infer", {"inputs": [{"name": "text_input", "datatype": "BYTES",
                                                   "shape": [1, 2], "data": ["a"]}]}, 400),
    ("embedding", "missing"): ("infer", {"inputs": []}, 400),
    ("embedding", "not_json"): ("infer", b"{\"inputs\": [", 500),
    ("embedding", "invalid_utf8_body"): ("infer", b'{"inputs":[{"name":"text_input","datatype":'
                                         b'"BYTES","shape":[1,1],"data":["\xff\xfe"]}]}', 400),
    ("embedding", "json_type"): ("infer", {"inputs": [{"name": "text_input", "datatype": "BYTES",
                                                       "shape": [1, 1], "data": [7]}]}, 500),
    ("stable_diffusion", "nan_text"): ("infer", {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]},
        {"name": "guidance_scale", "datatype": "FP32", "shape": [1, 1], "data": ["NaN"]}]}, 500),
    ("stable_diffusion", "missing"): ("infer", {"inputs": [
        {"name": "steps", "datatype": "INT32", "shape": [1, 1], "data": [2]}]}, 400),
    ("llm", "missing"): ("generate", {"max_tokens": 3}, 400),
    ("llm_bls", "missing"): ("generate", {"max_tokens": 3}, 400),
    ("llm", "negative"): ("generate", {"text_input": "hi", "max_tokens": -3}, 400),
    ("llm_bls", "huge"): ("generate", {"text_input": "hi", "max_tokens": 10**9}, 400),
    ("llm_bls", "json_type"): ("generate", {"text_input": "hi", "max_tokens": "x"}, 500),
    ("llm", "json_type"): ("generate", {"text_input": 5}, 500),
    ("llm_engine", "missing"): ("generate", {"request_output_len": 2}, 400),
}
FRONTEND = {k for k, v in HTTP_BODIES.items() if v[2] == 500}  # Triton's JSON parser answers


@pytest.mark.parametrize(("model", "case"), list(HTTP_BODIES),
                         ids=[f"{m}-{c}" for m, c in HTTP_BODIES])
def test_http_malformed(server, before, model, case):
    route, body, expected = HTTP_BODIES[(model, case)]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status = http_status(f"http://{server.http_url}/v2/models/{model}/{route}", "POST", raw)
    assert status == expected


def test_no_stub_died_and_every_model_still_serves(server, before):
    stubs, reloads = before
    assert len(server.watchdog.reloads) == reloads, server.watchdog.reloads
    assert live_stubs(server) == stubs
    assert server.ready()
    for model in PUBLIC:
        call(server.grpc_url, model)
