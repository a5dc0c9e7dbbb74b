"""Chat and text completions: one generation through the first available target, in OpenAI's
response shapes, streamed (SSE) or not; usage recorded when it ends, even when cut short."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from uip.gateway import sse
from uip.gateway.chat_template import formatter_for, render
from uip.gateway.errors import ApiError
from uip.gateway.llm import Delta, GenParams, generate
from uip.gateway.retrieval import citations
from uip.gateway.routing import Target, external_json, external_stream, first_available
from uip.gateway.state import Caller, Gateway
from uip.gateway.tools import Call, ToolPlan


@dataclass
class TextJob:
    """What differs between chat and completions."""

    kind: str  # "chat" | "completion"
    model: str  # the id the client asked for
    messages: list[dict[str, str]] | None  # chat: rendered by the model's template
    prompt: str | None  # completions: sent as is
    params: GenParams
    body: dict[str, Any]  # the client's body, forwarded to external APIs
    stream: bool
    include_usage: bool
    echo: str = ""
    hits: list = field(default_factory=list)  # retrieved chunks (file_search): cited
    tools: ToolPlan | None = None  # the turn offers tools: the output may be a call

    @property
    def path(self) -> str:
        return "/chat/completions" if self.kind == "chat" else "/completions"

    def envelope(self, rid: str, created: int, choices: list, usage: dict | None,
                 chunk: bool) -> dict[str, Any]:
        obj = {"chat": "chat.completion", "completion": "text_completion"}[self.kind]
        out = {"id": rid, "object": obj + (".chunk" if chunk and self.kind == "chat" else ""),
               "created": created, "model": self.model, "choices": choices}
        if usage is not None or not chunk or self.include_usage:
            out["usage"] = usage
        return out

    def choice(self, index: int, text: str | None, finish: str | None, chunk: bool,
               first: bool = False, whole: str | None = None,
               call: Call | None = None) -> dict[str, Any]:
        """`whole`: the choice's whole text, given with its last chunk (its citations)."""
        if self.kind == "completion":
            return {"index": index, "text": text or "", "logprobs": None,
                    "finish_reason": finish}
        if not chunk:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.hits:
                message["annotations"] = citations(self.hits, text or "")
            if call is not None:
                message["tool_calls"] = [call.chat()]
            return {"index": index, "message": message, "logprobs": None,
                    "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        if call is not None:
            delta["tool_calls"] = [{"index": 0, **call.chat()}]
        if self.hits and finish is not None:
            delta["annotations"] = citations(self.hits, whole or "")
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def answer(self, text: str, finish: str) -> tuple[str | None, Call | None, str]:
        """The output as content and tool call, and the finish reason to report."""
        if self.tools is None:
            return text, None, finish
        content, call = self.tools.parse(text)
        return content, call, "tool_calls" if call is not None else finish


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


class Chunks:
    """The SSE events of one streamed answer. A text chunk differs from the next only in its
    text: its JSON is made once per choice around a placeholder, and each token's event is
    that text's JSON string spliced in (no dict and no full `json.dumps` per token)."""

    _HOLE = "\x00"
    _HOLE_JSON = json.dumps(_HOLE)

    def __init__(self, job: TextJob, rid: str, created: int):
        self.job, self.rid, self.created = job, rid, created
        self._text: dict[int, tuple[str, str]] = {}

    def event(self, choices: list, usage_: dict | None = None) -> str:
        return sse.event(self.job.envelope(self.rid, self.created, choices, usage_, True))

    def text(self, index: int, text: str) -> str:
        parts = self._text.get(index)
        if parts is None:
            whole = sse.event(self.job.envelope(
                self.rid, self.created, [self.job.choice(index, self._HOLE, None, True)], None,
                True))
            head, tail = whole.split(self._HOLE_JSON)
            parts = self._text[index] = (head, tail)
        return parts[0] + json.dumps(text, ensure_ascii=False) + parts[1]


@dataclass
class Opened:
    """A generation that has started: each choice's first delta is in, so no fallback is
    needed any more."""

    target: Target
    prompt: str = ""  # the prompt sent to Triton: its tokens are counted when usage is due
    choices: list[AsyncIterator[Delta]] | None = None  # one delta stream per choice
    external: Any = None  # an external JSON answer, or its stream of SSE payloads

    @cached_property
    def prompt_tokens(self) -> int:
        """Counted after the generation (usage comes last), not before its first token."""
        if self.target.tokenizer is None:
            return 0
        return formatter_for(self.target.tokenizer).count_tokens(self.prompt)


async def _open(g: Gateway, job: TextJob, target: Target) -> Opened:
    if target.external is not None:
        body = {**job.body}
        if job.stream:
            lines = external_stream(g.http, target, job.path, body)
            first = await anext(lines)  # connects: errors here fall back
            return Opened(target, external=(first, lines))
        return Opened(target, external=await external_json(g.http, target, job.path, body))
    assert target.tokenizer is not None  # the spec requires one for llm models
    prompt = (render(target.tokenizer, job.messages) if job.messages is not None
              else job.prompt or "")
    timeout = g.spec.limits.stream_timeout_s
    params = job.params if target.lora is None else replace(job.params, lora_name=target.lora)
    streams = [generate(g.triton, target.triton, prompt, params, timeout, i)
               for i in range(job.params.n)]
    firsts = await _first_deltas(streams)
    return Opened(target, prompt, [_primed(f, s) for f, s in zip(firsts, streams, strict=True)])


async def _first_deltas(streams: list[AsyncIterator[Delta]]) -> list[Delta]:
    """Each stream's first delta; if one fails, the others are cancelled (their Triton
    requests with them) and its error stands."""
    if len(streams) == 1:
        return [await anext(streams[0])]
    tasks = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _primed(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async with aclosing(rest):  # closing the chain closes the Triton stream at once
        async for d in rest:
            yield d


async def _merged(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) of all choices as they come; closing it cancels what still
    runs. One choice is read directly (the common case: no task, no queue per token)."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for d in only:
                yield 0, d
        return
    queue: asyncio.Queue[tuple[int, Delta | Exception]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async with aclosing(stream):
                async for d in stream:
                    queue.put_nowait((i, d))
        except Exception as e:  # noqa: BLE001 - re-raised by the reader
            queue.put_nowait((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, d = await queue.get()
            if isinstance(d, Exception):
                raise d
            if d.finish_reason is not None:
                left -= 1
            yield i, d
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(g: Gateway, caller: Caller, targets: list[Target], job: TextJob):
    g.limiter.admit(caller)
    opened = await first_available(targets, lambda t: _open(g, job, t))
    rid = ("chatcmpl-" if job.kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if opened.external is not None:
        return _external(g, caller, job, opened)
    if not job.stream:
        return await _whole(g, caller, job, opened, rid, created)
    return sse.response(_events(g, caller, job, opened, rid, created))


async def _whole(g: Gateway, caller: Caller, job: TextJob, opened: Opened, rid: str,
                 created: int) -> JSONResponse:
    assert opened.choices is not None
    n = len(opened.choices)
    texts: list[list[str]] = [[job.echo] for _ in range(n)]
    finish: list[str] = ["stop"] * n
    completion = 0
    merged = _merged(opened.choices)
    try:
        async for i, d in merged:
            texts[i].append(d.text)
            if d.finish_reason is not None:
                finish[i] = d.finish_reason
                completion += d.completion_tokens
    finally:
        await merged.aclose()
    use = usage(opened.prompt_tokens, completion)
    await g.record_usage(caller, job.model, job.path, opened.prompt_tokens, completion)
    choices = []
    for i in range(n):
        content, call, fin = job.answer("".join(texts[i][1:]), finish[i])
        if content is not None:
            content = job.echo + content
        choices.append(job.choice(i, content, fin, chunk=False, call=call))
    return JSONResponse(job.envelope(rid, created, choices, use, chunk=False))


async def _events(g: Gateway, caller: Caller, job: TextJob, opened: Opened, rid: str,
                  created: int) -> AsyncIterator[str]:
    """Chunks of each choice (tagged with its index) as its tokens come; each choice's
    finish reason in a chunk of its own; usage (prompt once, completions summed) last."""
    assert opened.choices is not None
    chunks = Chunks(job, rid, created)
    n = len(opened.choices)
    completion = 0
    answers = [""] * n  # each choice's text so far (for citations)
    merged = _merged(opened.choices)
    try:
        if job.tools is not None:  # the output may be a call: each is sent when complete
            texts, finish = [""] * n, ["stop"] * n
            async for i, d in merged:
                texts[i] += d.text
                if d.finish_reason is not None:
                    finish[i] = d.finish_reason
                    completion += d.completion_tokens
            for i in range(n):
                content, call, fin = job.answer(texts[i], finish[i])
                yield chunks.event([job.choice(i, content, None, True, first=True)])
                if call is not None:
                    yield chunks.event([job.choice(i, None, None, True, call=call)])
                yield chunks.event([job.choice(i, None, fin, True)])
            if job.include_usage:
                yield chunks.event([], usage(opened.prompt_tokens, completion))
            yield sse.event("[DONE]")
            return
        # One write per token: the role chunks go out with the first token (it is already
        # in), the last finish chunk with the usage chunk and [DONE].
        out = ""
        if job.kind == "chat" or job.echo:
            text = "" if job.kind == "chat" else job.echo
            out = "".join(chunks.event([job.choice(i, text, None, True, first=True)])
                          for i in range(n))
        left = n
        async for i, d in merged:
            if d.text:
                answers[i] += d.text
                out += chunks.text(i, d.text)
            if d.finish_reason is not None:
                completion += d.completion_tokens
                left -= 1
                out += chunks.event([job.choice(i, None, d.finish_reason, True,
                                                whole=answers[i])])
            if out and left:
                yield out
                out = ""
        if job.include_usage:
            out += chunks.event([], usage(opened.prompt_tokens, completion))
        yield out + sse.event("[DONE]")
    except ApiError as e:  # after the headers: OpenAI's SDK raises on an error event
        yield sse.event(e.body())
    finally:
        await merged.aclose()
        await g.record_usage(caller, job.model, job.path, opened.prompt_tokens, completion)


def _external(g: Gateway, caller: Caller, job: TextJob, opened: Opened):
    """An external API's answer, relayed with the client's model id; usage from its own."""
    if not job.stream:
        answer = opened.external
        answer["model"] = job.model
        u = answer.get("usage") or {}
        return JSONResponse(answer, background=BackgroundTask(
            g.record_usage, caller, job.model, job.path, int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0)))
    first, lines = opened.external

    async def events() -> AsyncIterator[str]:
        got: dict[str, Any] = {}
        payload = first
        try:
            while True:
                chunk = parse_json(payload)
                if chunk is not None:
                    got = chunk.get("usage") or got
                    chunk["model"] = job.model
                    yield sse.event(chunk)
                elif payload == "[DONE]":
                    yield sse.event("[DONE]")
                    return
                payload = await anext(lines)
        except StopAsyncIteration:
            yield sse.event("[DONE]")
        except ApiError as e:
            yield sse.event(e.body())
        finally:
            await lines.aclose()
            await g.record_usage(caller, job.model, job.path, int(got.get("prompt_tokens") or 0),
                                 int(got.get("completion_tokens") or 0))

    return sse.response(events())


def parse_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
