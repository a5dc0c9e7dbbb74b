"""One generation on a Triton target, collected as it streams in: each choice's text, finish
reason and tokens, and the usage. The one place these are gathered; the emitters (chat
completions, completions, `/v1/responses`; streamed or not) only format them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import cached_property

from uip.gateway.chat_template import formatter_for, render
from uip.gateway.llm import Delta, Deltas, GenParams, generate
from uip.gateway.routing import Target
from uip.gateway.state import Gateway

# (prompt tokens, completion tokens) -> records them (Gateway.record_usage with its caller)
Charge = Callable[[int, int], Awaitable[None]]


@dataclass
class Choice:
    """One choice as its deltas come."""

    index: int
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None  # set by its last delta
    completion_tokens: int = 0  # likewise: a choice cut short counts none

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Generation:
    """The choices of one generation; each choice's first delta is in (no fallback is needed
    any more). The prompt's tokens are counted when usage is due, after the last token, so
    they add nothing to the time to first token."""

    def __init__(self, target: Target, prompt: str, streams: list[AsyncIterator[Delta]],
                 charge: Charge | None = None):
        self.target, self.prompt, self._streams, self._charge = target, prompt, streams, charge
        self.choices = [Choice(i) for i in range(len(streams))]
        self.running = len(streams)  # choices not finished yet

    @cached_property
    def prompt_tokens(self) -> int:
        if self.target.tokenizer is None:
            return 0
        return formatter_for(self.target.tokenizer).count_tokens(self.prompt)

    @property
    def completion_tokens(self) -> int:
        """Every finished choice's tokens (the prompt counts once)."""
        return sum(c.completion_tokens for c in self.choices)

    def _add(self, choice: Choice, d: Delta) -> None:
        if d.text:
            choice.parts.append(d.text)
        if d.finish_reason is not None:
            choice.finish_reason, choice.completion_tokens = d.finish_reason, d.completion_tokens
            self.running -= 1

    async def deltas(self) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, its new text) as they come, the choice brought up to date (its last one
        has its finish_reason set). When it ends, even cut short, the usage is charged;
        closing it cancels what still runs. One choice is read directly (the common case:
        no task, no queue per token)."""
        try:
            if len(self._streams) == 1:
                only = self.choices[0]
                stream, first = self._streams[0], None
                if isinstance(stream, _Primed):  # its first delta, then the stream itself
                    stream, first = stream.rest, stream.first
                async with aclosing(stream):
                    if first is not None:
                        self._add(only, first)
                        yield only, first.text
                    async for d in stream:
                        self._add(only, d)
                        yield only, d.text
                return
            async with aclosing(_merged(self._streams)) as merged:
                async for i, d in merged:
                    choice = self.choices[i]
                    self._add(choice, d)
                    yield choice, d.text
        finally:
            if self._charge is not None:
                await self._charge(self.prompt_tokens, self.completion_tokens)

    async def finish(self) -> list[Choice]:
        """All choices, generated to their end."""
        async with aclosing(self.deltas()) as deltas:
            async for _ in deltas:
                pass
        return self.choices


@dataclass
class Begun:
    """A generation whose requests were sent (`begin`): its prompt and one stream per
    choice, their first deltas not read yet."""

    prompt: str
    streams: list[Deltas]

    def cancel(self) -> None:
        for s in self.streams:
            s.cancel()


def begin(g: Gateway, target: Target, params: GenParams,
          messages: list[dict[str, str]] | None = None, prompt: str = "") -> Begun:
    """`params.n` choices of `messages` (rendered by the target's chat template) or of
    `prompt` as is, their requests sent now: on the event loop's next turn, whatever the
    caller awaits first (a stream's handler: `textgen.run`)."""
    assert target.tokenizer is not None  # the spec requires one for llm models
    if messages is not None:
        prompt = render(target.tokenizer, messages)
    timeout = g.spec.limits.stream_timeout_s
    if target.lora is not None:
        params = replace(params, lora_name=target.lora)
    return Begun(prompt, [generate(g.triton, target.triton, prompt, params, timeout, i)
                          for i in range(params.n)])


async def start(g: Gateway, target: Target, params: GenParams,
                messages: list[dict[str, str]] | None = None, prompt: str = "",
                charge: Charge | None = None, begun: Begun | None = None) -> Generation:
    """The generation (`begin`, unless `begun` already), once each choice's first delta is
    in: until then an unavailable target can fall back (routing.first_available)."""
    begun = begun or begin(g, target, params, messages, prompt)
    try:
        firsts = await _first_deltas(begun.streams)
    except BaseException:
        begun.cancel()  # also the choices whose first delta was not asked for yet
        raise
    return Generation(target, begun.prompt, [_Primed(f, s) for f, s in
                                             zip(firsts, begun.streams, strict=True)], charge)


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


class _Primed:
    """A stream whose first delta was read already (`start`): that delta, then the rest.
    Read as one stream, or taken apart by `deltas` (one layer fewer per token)."""

    def __init__(self, first: Delta, rest: AsyncIterator[Delta]):
        self.first, self.rest = first, rest

    async def __aiter__(self) -> AsyncIterator[Delta]:
        yield self.first
        async for d in self.rest:
            yield d

    async def aclose(self) -> None:
        await self.rest.aclose()  # closing it closes the Triton stream at once


async def _merged(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) of several choices as they come; closing it cancels what still
    runs."""
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
