"""A streamed chat answer is returned before Triton's first token (sse.OpeningStream): the
status line waits for it; an error until then is answered with its status and OpenAI body;
a client that leaves before it cancels the Triton stream; the role chunk goes out with the
first token. Driven through the app's ASGI interface over a stand-in for Triton's stream."""

from __future__ import annotations

import asyncio
import json

from uip.gateway import triton
from uip.gateway.app import create_app
from uip.gateway.errors import ApiError

BODY = json.dumps({"model": "llm_bls", "stream": True,
                   "messages": [{"role": "user", "content": "Hi"}]}).encode()


def _scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "server": ("127.0.0.1", 9000), "client": ("127.0.0.1", 1),
            "scheme": "http", "method": "POST", "root_path": "",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "state": {},
            "headers": [(b"host", b"x"), (b"content-type", b"application/json")]}


def _call(monkeypatch, stream, disconnect: asyncio.Event | None = None) -> list[dict]:
    """The ASGI messages the app sends for one streamed chat request."""
    monkeypatch.setattr(triton.Triton, "stream", stream)
    sent: list[dict] = []

    async def main():
        app = create_app("127.0.0.1:1", use_database=False)
        body_read = False

        async def receive():
            nonlocal body_read
            if not body_read:
                body_read = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await (disconnect or asyncio.Event()).wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(_scope(), receive, send), 10)

    asyncio.run(main())
    return sent


def test_error_before_the_first_token_keeps_its_status(llm_tiny_dir, monkeypatch):
    async def stream(self, request, timeout_s):
        raise ApiError(400, "llm_bls: prompt too long", code="invalid_argument")
        yield  # an async generator

    start, body = _call(monkeypatch, stream)
    assert start["status"] == 400
    assert json.loads(body["body"])["error"]["message"] == "llm_bls: prompt too long"


def test_first_token_goes_out_with_the_role_chunk(llm_tiny_dir, monkeypatch):
    async def stream(self, request, timeout_s):
        assert request.model_name == "llm_bls"
        for text in ("Hel", "lo"):
            yield {"text_output": text, "num_output_tokens": 1}
        yield {"finish_reason": "stop"}

    start, first, *rest = _call(monkeypatch, stream)
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    events = [json.loads(line[6:]) for line in first["body"].decode().splitlines()
              if line.startswith("data: {")]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}]
    assert rest[-2]["body"].endswith(b"data: [DONE]\n\n") and not rest[-1]["more_body"]


def test_client_that_leaves_before_the_first_token_cancels_the_stream(llm_tiny_dir,
                                                                        monkeypatch):
    left, cancelled = asyncio.Event(), []

    async def stream(self, request, timeout_s):
        try:
            left.set()  # the request reached Triton; the client hangs up now
            await asyncio.sleep(3600)  # Triton's first token, never
            yield {"text_output": "late"}
        except asyncio.CancelledError:
            cancelled.append(request.id)
            raise

    assert _call(monkeypatch, stream, disconnect=left) == []  # nothing sent, not even headers
    assert len(cancelled) == 1 and cancelled[0].startswith("gw-")
