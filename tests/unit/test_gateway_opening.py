"""A streamed chat answer is returned before Triton's first token (sse.OpeningStream): the
status line waits for it; an error until then is answered with its status and OpenAI body;
a client that leaves before it cancels the Triton stream; the role chunk goes out with the
first token. Driven through the app's ASGI interface over a stand-in for Triton's stream."""

from __future__ import annotations

import asyncio
import json

from support import triton_stream

from uip.gateway.app import create_app

BODY = json.dumps({"model": "llm_bls", "stream": True,
                   "messages": [{"role": "user", "content": "Hi"}]}).encode()


def _scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "server": ("127.0.0.1", 9000), "client": ("127.0.0.1", 1),
            "scheme": "http", "method": "POST", "root_path": "",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "state": {},
            "headers": [(b"host", b"x"), (b"content-type", b"application/json")]}


def _call(monkeypatch, script, disconnect: asyncio.Event | None = None,
          calls: list | None = None) -> list[dict]:
    """The ASGI messages the app sends for one streamed chat request."""
    triton_stream.patch(monkeypatch, script, calls)
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
    async def script(request):
        yield triton_stream.response(error="prompt too long")

    calls: list = []
    start, body = _call(monkeypatch, script, calls=calls)
    assert start["status"] == 400
    assert json.loads(body["body"])["error"]["message"] == "llm_bls: prompt too long"
    assert [c.cancelled for _, c in calls] == [1]


def test_first_token_goes_out_with_the_role_chunk(llm_tiny_dir, monkeypatch):
    def script(request):
        assert request.model_name == "llm_bls" and request.id.startswith("gw-")
        return triton_stream.outputs({"text_output": "Hel", "num_output_tokens": 1},
                                     {"text_output": "lo", "num_output_tokens": 1},
                                     {"finish_reason": "stop"})

    start, first, *rest = _call(monkeypatch, script)
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    events = [json.loads(line[6:]) for line in first["body"].decode().splitlines()
              if line.startswith("data: {")]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}]
    assert rest[-2]["body"].endswith(b"data: [DONE]\n\n") and not rest[-1]["more_body"]


def test_client_that_leaves_before_the_first_token_cancels_the_stream(llm_tiny_dir,
                                                                        monkeypatch):
    left = asyncio.Event()

    async def script(request):
        left.set()  # the request reached Triton; the client hangs up now
        await asyncio.sleep(3600)  # Triton's first token, never
        yield triton_stream.response({"text_output": "late"})

    calls: list = []
    assert _call(monkeypatch, script, disconnect=left, calls=calls) == []  # not even headers
    assert [c.cancelled for _, c in calls] == [1]
