"""The FastAPI app (`create_app`) and running it under uvicorn (`serve`)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from uip.gateway import errors
from uip.gateway.spec import load_gateway_spec
from uip.gateway.state import Gateway

DEFAULT_PORT = 9000


def create_app(triton_grpc: str, spec_path: Path | None = None,
               database_url: str | None = None, use_database: bool = True) -> FastAPI:
    """The gateway app against Triton's gRPC endpoint; the database is migrated first."""
    spec = load_gateway_spec(spec_path)
    store = None
    if use_database:
        from uip.gateway.store import Store

        store = Store.open(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if store is not None:
            from uip.gateway.rag_store import rag_of

            rag_of(store).fail_unfinished()
        app.state.gateway = Gateway(spec, triton_grpc, store)
        yield
        await app.state.gateway.close()

    app = FastAPI(title="uip gateway", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API over the uip Triton models")
    errors.install(app)
    from uip.gateway import openai_routes

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


def serve(triton_grpc: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
          spec_path: Path | None = None, database_url: str | None = None) -> None:
    import uvicorn

    app = create_app(triton_grpc, spec_path, database_url)
    # uvloop and httptools (C) rather than asyncio's loop and h11; no access log
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")
