"""The FastAPI app (`create_app`) and running it under uvicorn (`serve`): in one process, or in
several worker processes on one port (uip.gateway.workers)."""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from uip.gateway import errors
from uip.gateway.spec import load_gateway_spec
from uip.gateway.state import Gateway

DEFAULT_PORT = 9000


def create_app(triton_grpc: str, spec_path: Path | None = None,
               database_url: str | None = None, use_database: bool = True,
               limiter=None, prepared: bool = False) -> FastAPI:
    """The gateway app against Triton's gRPC endpoint. The database is migrated and the
    ingestions an earlier run left unfinished are marked failed, unless `prepared` (a worker
    of several: `prepare` did it once, before any worker started)."""
    spec = load_gateway_spec(spec_path)
    store = None
    if use_database:
        from uip.gateway.store import Store

        store = Store.open(database_url, migrate=not prepared)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if store is not None and not prepared:
            from uip.gateway.rag_store import rag_of

            rag_of(store).fail_unfinished()
        app.state.gateway = Gateway(spec, triton_grpc, store, limiter)
        yield
        await app.state.gateway.close()

    app = FastAPI(title="uip gateway", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API over the uip Triton models")
    errors.install(app)
    from uip.gateway import fastroute, openai_routes

    fastroute.install(app, [r for r in openai_routes.router.routes if getattr(r, "endpoint", None)
                            in (openai_routes.chat_completions, openai_routes.completions)])
    app.include_router(openai_routes.router)
    if store is not None:
        from uip.gateway import rag_routes, state_routes

        app.include_router(state_routes.router)
        app.include_router(rag_routes.router)
    from uip.gateway import playground

    app.include_router(playground.router)

    @app.get("/health", include_in_schema=False)
    async def health():
        return {"status": "ok"}

    return app


def prepare(database_url: str | None) -> None:
    """What one process does before several workers open the database: migrate it, and mark
    failed the ingestions that a previous run left unfinished (a worker that starts later,
    or is restarted, must not fail the ingestions that the others run)."""
    from uip.gateway.rag_store import rag_of
    from uip.gateway.store import Store

    store = Store.open(database_url)
    try:
        rag_of(store).fail_unfinished()
    finally:
        store.close()


def serve(triton_grpc: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
          spec_path: Path | None = None, database_url: str | None = None,
          workers: int = 1) -> None:
    import uvicorn

    # uvloop and httptools (C) rather than asyncio's loop and h11; no access log
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False,
               "loop": "uvloop", "http": "httptools"}
    if workers <= 1:
        uvicorn.run(create_app(triton_grpc, spec_path, database_url), **options)
        return
    from uip.gateway.workers import supervise

    sys.exit(supervise(workers, triton_grpc, host, port, spec_path, database_url, options))
