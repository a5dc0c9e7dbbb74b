"""The gateway's shared state: spec, router, Triton channel, HTTP client, database, limits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx
from fastapi import Request

from uip.gateway.routing import Router
from uip.gateway.spec import GatewaySpec
from uip.gateway.triton import Triton

log = logging.getLogger("uip.gateway")


@dataclass(frozen=True)
class Caller:
    """Who calls: an API key (id, name, limits), or nobody while no key exists."""

    key_id: str | None = None
    name: str | None = None
    rpm: int | None = None
    tpm: int | None = None


ANONYMOUS = Caller()


class Gateway:
    def __init__(self, spec: GatewaySpec, triton_url: str, store=None, limiter=None):
        from uip.gateway.limits import Limiter

        self.spec = spec
        self.router = Router(spec)
        self.triton = Triton(triton_url)
        self.http = httpx.AsyncClient()
        self.store = store
        self.limiter = limiter or Limiter()
        self._writes: set[asyncio.Task] = set()
        self._jobs: set[asyncio.Task] = set()  # background work (file ingestion)
        self._watch = asyncio.ensure_future(self._watch_keys()) if store is not None else None

    async def _watch_keys(self) -> None:
        """While no key exists, ask the database again before the cached "no key" answer
        expires, so that requests never wait for that query."""
        while True:
            try:
                if await self.store.run(self.store.has_keys):
                    return
            except Exception as e:  # noqa: BLE001 - requests ask again themselves
                log.warning("API keys not checked: %s", e)
            await asyncio.sleep(self.store.NO_KEYS_TTL_S / 2)

    def background(self, coro) -> asyncio.Task:
        """Run `coro` after the response; cancelled when the gateway stops (an ingestion cut
        short is marked failed at the next start)."""
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return task

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.triton.close()
        await self.http.aclose()
        if self.store is not None:
            self.store.close()

    async def record_usage(self, caller: Caller, model: str, endpoint: str,
                           prompt_tokens: int = 0, completion_tokens: int = 0,
                           images: int = 0) -> None:
        """Count the tokens against the key's tpm now; write the usage row in the background
        (the response does not wait for the database)."""
        self.limiter.spend(caller, prompt_tokens + completion_tokens)
        if self.store is not None:
            task = asyncio.ensure_future(self.store.run(
                self.store.add_usage, caller.key_id, model, endpoint, prompt_tokens,
                completion_tokens, images))
            self._writes.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("usage row not written: %s", task.exception())


async def gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain `def` dependency in a worker thread, a thread hop on
    # every request
    return request.app.state.gateway
