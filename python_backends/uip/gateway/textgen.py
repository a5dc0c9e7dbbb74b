"""Chat and text completions: one generation through the first available target, in OpenAI's
response shapes, streamed (SSE) or not; usage recorded when it ends, even when cut short."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from uip.gateway import sse
from uip.gateway.chat_template import formatter_for, prompt_of
from uip.gateway.errors import ApiError
from uip.gateway.llm import Delta, GenParams, collect, generate
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

    def choice(self, text: str | None, finish: str | None, chunk: bool,
               first: bool = False, call: Call | None = None) -> dict[str, Any]:
        if self.kind == "completion":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if not chunk:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if call is not None:
                message["tool_calls"] = [call.chat()]
            return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        if call is not None:
            delta["tool_calls"] = [{"index": 0, **call.chat()}]
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def answer(self, text: str, finish: str) -> tuple[str | None, Call | None, str]:
        """The output as content and tool call, and the finish reason to report."""
        if self.tools is None:
            return text, None, finish
        content, call = self.tools.parse(text)
        return content, call, "tool_calls" if call is not None else finish


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


@dataclass
class Opened:
    """A generation that has started: its first delta is in, so no fallback is needed."""

    target: Target
    prompt_tokens: int
    first: Delta | None = None
    deltas: AsyncIterator[Delta] | None = None
    external: Any = None  # an external JSON answer, or its stream of SSE payloads


async def _open(g: Gateway, job: TextJob, target: Target) -> Opened:
    if target.external is not None:
        body = {**job.body}
        if job.stream:
            lines = external_stream(g.http, target, job.path, body)
            first = await anext(lines)  # connects: errors here fall back
            return Opened(target, 0, external=(first, lines))
        return Opened(target, 0, external=await external_json(g.http, target, job.path, body))
    assert target.tokenizer is not None  # the spec requires one for llm models
    if job.messages is not None:
        prompt, tokens = prompt_of(target.tokenizer, job.messages)
    else:
        prompt = job.prompt or ""
        tokens = formatter_for(target.tokenizer).count_tokens(prompt)
    deltas = generate(g.triton, target.triton, prompt, job.params,
                      g.spec.limits.stream_timeout_s)
    first = await anext(deltas)
    return Opened(target, tokens, first, deltas)


async def run(g: Gateway, caller: Caller, targets: list[Target], job: TextJob):
    g.limiter.admit(caller)
    opened = await first_available(targets, lambda t: _open(g, job, t))
    rid = ("chatcmpl-" if job.kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if opened.external is not None:
        return _external(g, caller, job, opened)
    if not job.stream:
        comp = await collect(_chain(opened))
        use = usage(opened.prompt_tokens, comp.completion_tokens)
        await g.record_usage(caller, job.model, job.path, use["prompt_tokens"],
                             use["completion_tokens"])
        content, call, finish = job.answer(comp.text, comp.finish_reason)
        if content is not None:
            content = job.echo + content
        choice = job.choice(content, finish, chunk=False, call=call)
        return JSONResponse(job.envelope(rid, created, [choice], use, chunk=False))
    return sse.response(_events(g, caller, job, opened, rid, created))


async def _chain(opened: Opened) -> AsyncIterator[Delta]:
    assert opened.first is not None and opened.deltas is not None
    yield opened.first
    async for d in opened.deltas:
        yield d


async def _events(g: Gateway, caller: Caller, job: TextJob, opened: Opened, rid: str,
                  created: int) -> AsyncIterator[str]:
    completion = 0
    deltas = _chain(opened)
    try:
        if job.tools is not None:  # the output may be a call: it is sent when complete
            comp = await collect(deltas)
            completion = comp.completion_tokens
            content, call, finish = job.answer(comp.text, comp.finish_reason)
            yield sse.event(job.envelope(rid, created, [job.choice(content, None, True, True)],
                                         None, chunk=True))
            if call is not None:
                yield sse.event(job.envelope(
                    rid, created, [job.choice(None, None, True, call=call)], None, True))
            yield sse.event(job.envelope(rid, created, [job.choice(None, finish, True)], None,
                                         True))
            if job.include_usage:
                yield sse.event(job.envelope(rid, created, [],
                                             usage(opened.prompt_tokens, completion), True))
            yield sse.event("[DONE]")
            return
        first = True
        if job.kind == "chat" or job.echo:
            text = "" if job.kind == "chat" else job.echo
            yield sse.event(job.envelope(rid, created, [job.choice(text, None, True, True)],
                                         None, chunk=True))
            first = False
        async for d in deltas:
            if d.finish_reason is not None:
                completion = d.completion_tokens
                if d.text:
                    yield sse.event(job.envelope(
                        rid, created, [job.choice(d.text, None, True, first)], None, True))
                yield sse.event(job.envelope(
                    rid, created, [job.choice(None, d.finish_reason, True, first)], None, True))
                break
            yield sse.event(job.envelope(rid, created, [job.choice(d.text, None, True, first)],
                                         None, chunk=True))
            first = False
        use = usage(opened.prompt_tokens, completion)
        if job.include_usage:
            yield sse.event(job.envelope(rid, created, [], use, chunk=True))
        yield sse.event("[DONE]")
    except ApiError as e:  # after the headers: OpenAI's SDK raises on an error event
        yield sse.event(e.body())
    finally:
        await deltas.aclose()
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
