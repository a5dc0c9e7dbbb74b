"""The default repository as tritonserver sees it."""

from __future__ import annotations

import urllib.request

from uip.core.paths import DEFAULT_REPOSITORY


def test_every_model_is_ready(server):
    states = server.model_states()
    expected = sorted(p.parent.name for p in DEFAULT_REPOSITORY.glob("*/config.pbtxt"))
    assert sorted(states) == expected
    not_ready = {m: s for m, s in states.items() if s != "READY"}
    assert not not_ready, f"models not READY: {not_ready}"


def test_metrics_endpoint_serves_prometheus(server):
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        body = r.read().decode()
    assert "nv_inference_request_success" in body
