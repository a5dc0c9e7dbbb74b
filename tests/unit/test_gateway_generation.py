"""Streamed answers count the prompt's tokens when usage is due, after the tokens were sent:
`/v1/responses` and chat completions over a stand-in for Triton's stream (no server), with
a log of when the count runs and of what the client receives, in order."""

from __future__ import annotations

import asyncio
import json

from support import triton_stream

from uip.gateway import openai_routes, state_routes
from uip.gateway.chat_template import ChatFormatter
from uip.gateway.schemas import ChatRequest, ResponseRequest
from uip.gateway.spec import load_gateway_spec
from uip.gateway.state import ANONYMOUS, Gateway

TOKENS = ["Hel", "lo", " there"]


def _streamed(route, body, monkeypatch) -> list[tuple[str, object]]:
    """("count", n) when the prompt is counted, ("sent", chunk) for what the client gets."""
    log: list[tuple[str, object]] = []
    count = ChatFormatter.count_tokens

    def counting(self, text: str) -> int:
        n = count(self, text)
        log.append(("count", n))
        return n

    def script(request):  # llm_bls's responses
        return triton_stream.outputs(*[{"text_output": t, "num_output_tokens": 1}
                                       for t in TOKENS], {"finish_reason": "length"})

    triton_stream.patch(monkeypatch, script)

    async def main():
        g = Gateway(load_gateway_spec(None), "127.0.0.1:1")
        try:
            response = await route(body, ANONYMOUS, g)
            async for chunk in response.body_iterator:
                log.append(("sent", chunk))
        finally:
            await g.close()

    monkeypatch.setattr(ChatFormatter, "count_tokens", counting)
    asyncio.run(main())
    return log


def _counted_after(log, has_text) -> int:
    """The count (once), after every chunk with an event that carries text; its value."""
    [(at, n)] = [(i, v) for i, (kind, v) in enumerate(log) if kind == "count"]
    texts = [i for i, (kind, v) in enumerate(log)
             if kind == "sent" and any(has_text(e) for e in _data(v))]
    assert texts and max(texts) < at, log
    return n


def _data(chunk: str) -> list:
    return [json.loads(line[6:]) for line in chunk.splitlines()
            if line.startswith("data: {")]


def test_responses_stream_counts_the_prompt_after_the_last_token(llm_tiny_dir, monkeypatch):
    body = ResponseRequest(model="llm_bls", input="Hi", stream=True, store=False)
    log = _streamed(state_routes.create_response, body, monkeypatch)
    n = _counted_after(log, lambda e: e["type"] == "response.output_text.delta")
    events = [e for kind, c in log if kind == "sent" for e in _data(c)]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") \
        == "".join(TOKENS)
    final = events[-1]["response"]
    assert final["status"] == "incomplete"  # finish reason length
    assert final["usage"]["input_tokens"] == n > 0
    assert final["usage"]["output_tokens"] == len(TOKENS)


def test_chat_stream_counts_the_prompt_after_the_last_token(llm_tiny_dir, monkeypatch):
    body = ChatRequest(model="llm_bls", messages=[{"role": "user", "content": "Hi"}],
                       stream=True, stream_options={"include_usage": True})
    log = _streamed(openai_routes.chat_completions, body, monkeypatch)
    n = _counted_after(log, 
                        lambda e: e["choices"] and e["choices"][0]["delta"].get("content"))
    chunks = [e for kind, c in log if kind == "sent" for e in _data(c)]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if c["choices"]) == "".join(TOKENS)
    assert chunks[-1]["usage"] == {"prompt_tokens": n, "completion_tokens": len(TOKENS),
                                   "total_tokens": n + len(TOKENS)}
