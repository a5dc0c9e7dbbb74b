"""Chat and text completions: one generation through the first available target, in OpenAI's
response shapes, streamed (SSE) or not; usage recorded when it ends, even when cut short."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from uip.gateway import sse
from uip.gateway.errors import ApiError
from uip.gateway.generation import Begun, Charge, Choice, Generation, begin, start
from uip.gateway.llm import GenParams
from uip.gateway.retrieval import citations
from uip.gateway.routing import (
    RETRYABLE,
    Target,
    external_json,
    external_stream,
    first_available,
)
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

    def answer(self, c: Choice) -> tuple[str | None, Call | None, str]:
        """A finished choice as content (echo first) and tool call, and the finish reason
        to report."""
        finish = c.finish_reason or "stop"
        if self.tools is None:
            return self.echo + c.text, None, finish
        content, call = self.tools.parse(c.text)
        if content is not None:
            content = self.echo + content
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

    def usage(self, gen: Generation) -> str:
        """The usage chunk if asked for (counting the prompt: once the last token is in)."""
        if not self.job.include_usage:
            return ""
        return self.event([], usage(gen.prompt_tokens, gen.completion_tokens))

    def prepare(self, n: int) -> None:
        """The text chunks' JSON of choices 0 to n - 1 (before the first token is in)."""
        for index in range(n):
            self._parts(index)

    def _parts(self, index: int) -> tuple[str, str]:
        parts = self._text.get(index)
        if parts is None:
            whole = sse.event(self.job.envelope(
                self.rid, self.created, [self.job.choice(index, self._HOLE, None, True)], None,
                True))
            head, tail = whole.split(self._HOLE_JSON)
            parts = self._text[index] = (head, tail)
        return parts

    def text(self, index: int, text: str) -> str:
        parts = self._text.get(index) or self._parts(index)
        return parts[0] + json.dumps(text, ensure_ascii=False) + parts[1]


@dataclass
class Relay:
    """An external API's answer: its JSON, or (its first SSE payload, the rest)."""

    answer: Any


async def run(g: Gateway, caller: Caller, targets: list[Target], job: TextJob):
    """The answer. A stream's requests are sent from here, their first deltas awaited in a
    task of its own (with the fallbacks); the response is returned at once
    (sse.OpeningStream) and set up while the first token is awaited."""
    await g.limiter.admit(caller)
    charge = partial(g.record_usage, caller, job.model, job.path)
    rid = ("chatcmpl-" if job.kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if not job.stream:
        opened = await first_available(targets, lambda t: _open(g, job, t, charge))
        if isinstance(opened, Relay):
            return _external_json(g, caller, job, opened)
        return await _whole(job, opened, rid, created)
    begun = _begin(g, job, targets[0])  # the request goes out on the loop's next turn
    task = asyncio.ensure_future(first_available(
        targets, lambda t: _open(g, job, t, charge, begun if t is targets[0] else None)))
    task.add_done_callback(partial(_settled, begun))
    return sse.OpeningStream(_streamed(g, caller, job, task, rid, created))


def _begin(g: Gateway, job: TextJob, target: Target) -> Begun | None:
    """The first target's requests sent from the handler itself (a task would send them one
    turn of the event loop later, a turn that waits for the other streams' tokens); None
    when it is external, or unavailable now (first_available then tries it, then the
    next)."""
    if target.external is not None:
        return None
    try:
        return begin(g, target, job.params, job.messages, job.prompt or "")
    except ApiError as e:
        if e.status not in RETRYABLE:
            raise
        return None


async def _open(g: Gateway, job: TextJob, target: Target, charge: Charge,
                begun: Begun | None = None) -> Generation | Relay:
    if target.external is None:
        return await start(g, target, job.params, job.messages, job.prompt or "", charge,
                           begun)
    body = {**job.body}
    if job.stream:
        lines = external_stream(g.http, target, job.path, body)
        first = await anext(lines)  # connects: errors here fall back
        return Relay((first, lines))
    return Relay(await external_json(g.http, target, job.path, body))


async def _whole(job: TextJob, gen: Generation, rid: str, created: int) -> JSONResponse:
    choices = []
    for c in await gen.finish():
        content, call, finish = job.answer(c)
        choices.append(job.choice(c.index, content, finish, chunk=False, call=call))
    use = usage(gen.prompt_tokens, gen.completion_tokens)
    return JSONResponse(job.envelope(rid, created, choices, use, chunk=False))


def _settled(begun: Begun | None, task: asyncio.Task) -> None:
    """An opening that failed or was cancelled, even before it ran (the client left at
    once): the requests sent for it are cancelled, its error is not logged as unretrieved
    (the response answers it, or nobody is left to answer)."""
    if task.cancelled() or task.exception() is not None:
        if begun is not None:
            begun.cancel()


async def _streamed(g: Gateway, caller: Caller, job: TextJob,
                    opening: asyncio.Task[Generation | Relay], rid: str,
                    created: int) -> AsyncIterator[str]:
    """The streamed answer. Its first step awaits the opening (an error until then is
    answered with its status; cancelling this cancels it); the first event is made ready
    meanwhile, and goes out as soon as the first token is in. Then chunks of each choice
    (tagged with its index) as its tokens come; each choice's finish reason in a chunk of its
    own; usage (prompt once, completions summed) last. One write per token: the role chunks
    go out with the first token, the last finish chunk with the usage chunk and [DONE]."""
    chunks = Chunks(job, rid, created)
    head = ""
    if job.tools is None:
        chunks.prepare(job.params.n)
        if job.kind == "chat" or job.echo:
            text = "" if job.kind == "chat" else job.echo
            head = "".join(chunks.event([job.choice(i, text, None, True, first=True)])
                           for i in range(job.params.n))
    opened = await opening
    if isinstance(opened, Relay):
        async with aclosing(_relayed(g, caller, job, opened)) as events:
            async for e in events:
                yield e
        return
    gen = opened
    if job.tools is not None:
        yield ""  # open: the headers now, each choice when complete
        async with aclosing(_events_when_complete(job, gen, chunks)) as events:
            async for e in events:
                yield e
        return
    out = head
    try:
        async with aclosing(gen.deltas()) as deltas:
            async for c, text in deltas:
                if text:
                    out += chunks.text(c.index, text)
                if c.finish_reason is not None:
                    out += chunks.event([job.choice(c.index, None, c.finish_reason, True,
                                                    whole=c.text)])
                if out and gen.running:
                    yield out
                    out = ""
        yield out + chunks.usage(gen) + sse.event("[DONE]")
    except ApiError as e:  # after the headers: OpenAI's SDK raises on an error event
        yield sse.event(e.body())


async def _events_when_complete(job: TextJob, gen: Generation, chunks: Chunks
                                ) -> AsyncIterator[str]:
    """Tools were offered: the output may be a call, so each choice is sent when complete."""
    try:
        for c in await gen.finish():
            content, call, finish = job.answer(c)
            yield chunks.event([job.choice(c.index, content, None, True, first=True)])
            if call is not None:
                yield chunks.event([job.choice(c.index, None, None, True, call=call)])
            yield chunks.event([job.choice(c.index, None, finish, True)])
        yield chunks.usage(gen) + sse.event("[DONE]")
    except ApiError as e:
        yield sse.event(e.body())


def _external_json(g: Gateway, caller: Caller, job: TextJob, relay: Relay) -> JSONResponse:
    """An external API's whole answer, relayed with the client's model id; usage from its
    own."""
    answer = relay.answer
    answer["model"] = job.model
    u = answer.get("usage") or {}
    return JSONResponse(answer, background=BackgroundTask(
        g.record_usage, caller, job.model, job.path, int(u.get("prompt_tokens") or 0),
        int(u.get("completion_tokens") or 0)))


async def _relayed(g: Gateway, caller: Caller, job: TextJob, relay: Relay
                   ) -> AsyncIterator[str]:
    """An external API's stream, relayed with the client's model id; usage from its own."""
    first, lines = relay.answer
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


def parse_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
