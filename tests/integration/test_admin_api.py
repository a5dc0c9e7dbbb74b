"""Admin APIs (model repository, config, statistics, ...) need the admin key; inference and
health do not. On the session server, which runs with a generated key like `uip serve`."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support.calls import http_status
from tritonclient.utils import InferenceServerException

ADMIN = [("POST", "/v2/repository/index"), ("GET", "/v2/models/embedding/config"),
         ("GET", "/v2/models/embedding/stats"), ("POST", "/v2/repository/models/embedding/load"),
         ("GET", "/v2/trace/setting"), ("GET", "/v2/systemsharedmemory/status")]


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_http_admin_api_needs_the_key(server, method, path):
    url = f"http://{server.http_url}{path}"
    body = b"{}" if method == "POST" else None
    assert http_status(url, method, body) == 403
    assert http_status(url, method, body, {"uip-admin-key": "wrong"}) == 403
    if "load" not in path:  # loading with the key works too, but would reload the model
        assert http_status(url, method, body, server.admin_headers()) == 200


def test_grpc_admin_api_needs_the_key(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (lambda h: client.get_model_config("embedding", headers=h),
                 lambda h: client.get_inference_statistics("embedding", headers=h),
                 lambda h: client.get_model_repository_index(headers=h)):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
        call(server.admin_headers("grpc"))


def test_inference_health_and_metadata_stay_open(server):
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/embedding/ready",
                 "/v2/models/embedding", "/v2"):
        assert http_status(f"http://{server.http_url}{path}") == 200, path
    for mod, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        t = mod.InferInput("text_input", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[b"open"]], dtype=object))
        out = mod.InferenceServerClient(url).infer("embedding", [t]).as_numpy("embedding")
        assert out.shape == (1, 384)
