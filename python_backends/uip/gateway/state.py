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
USAGE_BATCH_S = 0.25  # usage rows are written this long after the first of a batch came


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
        """`limiter`: the per-key limits (default: in this process's memory; the workers of
        `--workers N` share one, uip.gateway.limits.SharedLimiter)."""
        from uip.gateway.limits import Limiter

        self.spec = spec
        self.router = Router(spec)
        self.triton = Triton(triton_url)
        self.http = httpx.AsyncClient()
        self.store = store
        self.limiter = limiter or Limiter()
        self._rows: list[tuple] = []  # usage rows not yet written
        self._writer: asyncio.Task | None = None
        self._closing = False  # the rows left are written at once
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
        self._closing = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.triton.close()
        await self.http.aclose()
        await self.limiter.close()
        if self.store is not None:
            self.store.close()

    async def record_usage(self, caller: Caller, model: str, endpoint: str,
                           prompt_tokens: int = 0, completion_tokens: int = 0,
                           images: int = 0) -> None:
        """Count the tokens against the key's tpm now; write the usage row in the background
        (the response does not wait for the database). Rows wait up to USAGE_BATCH_S and are
        written together: one transaction and one thread hop per batch, not per request (a
        write holds the GIL a while: the next request of a client that sends them back to
        back would wait for it)."""
        await self.limiter.spend(caller, prompt_tokens + completion_tokens)
        if self.store is not None:
            self._rows.append((caller.key_id, model, endpoint, prompt_tokens,
                               completion_tokens, images))
            if self._writer is None:
                self._writer = asyncio.ensure_future(self._write_rows())

    async def _write_rows(self) -> None:
        try:
            while self._rows:
                if not self._closing:
                    await asyncio.sleep(USAGE_BATCH_S)
                rows, self._rows = self._rows, []
                try:
                    await self.store.run(self.store.add_usages, rows)
                except Exception as e:  # noqa: BLE001 - usage must not break responses
                    log.error("%d usage rows not written: %s", len(rows), e)
        finally:
            self._writer = None


async def gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain `def` dependency in a worker thread, a thread hop on
    # every request
    return request.app.state.gateway
