"""The fast routes of chat and text completions (uip.gateway.fastroute) answer every request
that fails before Triton exactly as FastAPI's own routes do (status, headers that matter,
OpenAI error body): malformed JSON, wrong content types, invalid fields, a body over the
limit, unknown models, the wrong method; and a stream that cannot be opened is answered with
its status before any event (sse.OpeningStream). No server: Triton is unreachable."""

from __future__ import annotations

import json

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from uip.gateway import fastroute, openai_routes
from uip.gateway.app import create_app

CHAT = {"model": "llm_bls", "messages": [{"role": "user", "content": "x"}]}
PROMPT = {"model": "llm", "prompt": "x"}
CASES = [
    (b"", "application/json"),
    (b"{", "application/json"),
    (b"[]", "application/json"),
    (b"\xff\xfe{", "application/json"),
    (b'{"model": 1}', "application/json"),
    (b'{"messages": []}', "application/json"),
    (json.dumps({**CHAT, "max_tokens": "many"}).encode(), "application/json"),
    (json.dumps({**CHAT, "n": 99}).encode(), "application/json"),
    (json.dumps({**CHAT, "model": "nope"}).encode(), "application/json; charset=utf-8"),
    (json.dumps({**CHAT, "model": "embedding"}).encode(), "Application/JSON"),
    (json.dumps(CHAT).encode(), "text/plain"),
    (json.dumps(CHAT).encode(), None),
    (json.dumps(CHAT).encode(), "application/vnd.api+json"),
    (json.dumps({**CHAT, "stream": True}).encode(), "application/json"),
    (json.dumps({**PROMPT, "stream": True}).encode(), "application/json"),
    (json.dumps({**PROMPT, "prompt": ["a", "b"]}).encode(), "application/json"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 9_000_000}]}).encode(),
     "application/json"),
]


def _client(monkeypatch, fast: bool, database_url: str | None = None) -> TestClient:
    if not fast:
        monkeypatch.setattr(fastroute, "install", lambda app, routes: None)
    return TestClient(create_app("127.0.0.1:1", database_url=database_url,
                                 use_database=database_url is not None))


def _answers(client: TestClient, key: str | None = None) -> list[tuple]:
    out = []
    for path in ("/v1/chat/completions", "/v1/completions"):
        for body, ctype in CASES:
            headers = {"content-type": ctype} if ctype else {}
            if key:
                headers["authorization"] = f"Bearer {key}"
            r = client.post(path, content=body, headers=headers)
            out.append((path, body[:40], ctype, r.status_code, r.headers.get("content-type"),
                        r.json()))
        r = client.get(path)
        out.append((path, "GET", r.status_code, r.headers.get("allow"), r.json()))
    return out


def test_fast_routes_answer_as_fastapi(monkeypatch):
    with _client(monkeypatch, fast=True) as fast:
        got = _answers(fast)
    with monkeypatch.context() as m, _client(m, fast=False) as slow:
        want = _answers(slow)
    assert got == want
    statuses = {a[3] for a in got if a[1] != "GET"}
    assert statuses == {400, 404, 413, 503}  # 503: Triton unreachable, the stream too


def test_install_refuses_a_route_it_would_bypass():
    async def other(body: openai_routes.ChatRequest, x: int = 0):
        return {}

    route = APIRoute("/v1/x", other, methods=["POST"])
    with pytest.raises(TypeError, match="fast route"):
        fastroute.install(None, [route])


@pytest.mark.parametrize("key", [None, "uip-wrong", "valid"])
def test_fast_routes_check_keys_in_fastapis_order(monkeypatch, tmp_path, key):
    """Once a key exists: the body's JSON is parsed before the key is checked (400 first),
    the key before the fields are validated (401 first)."""
    from uip.gateway.store import Store

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = Store.open(url)
    _, valid = store.create_key("a")
    store.close()
    key = valid if key == "valid" else key
    with _client(monkeypatch, fast=True, database_url=url) as fast:
        got = _answers(fast, key)
    with monkeypatch.context() as m, _client(m, fast=False, database_url=url) as slow:
        want = _answers(slow, key)
    assert got == want
    assert {a[3] for a in got if a[1] != "GET"} == ({400, 404, 413, 503} if key == valid
                                                    else {400, 401, 413})
