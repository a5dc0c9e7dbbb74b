"""`uip gateway` (the OpenAI-compatible gateway alone), `uip keys create|list|revoke`,
`uip rag add|search`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import typer

from uip.gateway.app import DEFAULT_PORT

keys_app = typer.Typer(help="API keys of the gateway (stored as hashes in its database).",
                       no_args_is_help=True)
rag_app = typer.Typer(help="Vector stores of the gateway: ingest files, search them.",
                      no_args_is_help=True)


def gateway(
    triton_grpc: str = typer.Option("localhost:8001", help="Triton's gRPC HOST:PORT"),
    port: int = typer.Option(DEFAULT_PORT, help="port of the gateway (base URL /v1)"),
    host: str = typer.Option("0.0.0.0", help="address to listen on"),
    spec: Path = typer.Option(None, help="gateway spec (default: specs/gateway.yaml)"),
    database_url: str = typer.Option(None, envvar="UIP_DATABASE_URL",
                                     help="SQLAlchemy URL (default: sqlite file in var/)"),
    workers: int = typer.Option(1, min=1, help="worker processes (an event loop each, on one "
                                "port; the per-key limits are shared)"),
) -> None:
    """Run the OpenAI-compatible gateway against a Triton server."""
    from uip.gateway.app import serve
    from uip.launch.command import LaunchError, port_in_use

    if port_in_use(port):
        raise LaunchError(f"Port {port} (gateway) is already in use; choose another with "
                          "--port N (or --gateway-port N with `uip serve`).")
    serve(triton_grpc, host, port, spec, database_url, workers)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="who the key is for"),
    rpm: int = typer.Option(None, min=1, help="requests per minute (default: unlimited)"),
    tpm: int = typer.Option(None, min=1, help="tokens per minute (default: unlimited)"),
    database_url: str = typer.Option(None, envvar="UIP_DATABASE_URL"),
) -> None:
    """Make an API key and print it once; from then on every /v1 call needs a key."""
    from uip.gateway.store import Store

    store = Store.open(database_url)
    try:
        key_id, key = store.create_key(name, rpm, tpm)
    finally:
        store.close()
    typer.echo(f"created key {key_id} for {name!r}; it is shown only now:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(database_url: str = typer.Option(None, envvar="UIP_DATABASE_URL")) -> None:
    """The keys made so far (id, name, limits, created, revoked); never the keys themselves."""
    from uip.gateway.store import Store

    store = Store.open(database_url)
    try:
        rows = store.list_keys()
    finally:
        store.close()
    typer.echo("id\tname\trpm\ttpm\tcreated\trevoked")
    for r in rows:
        typer.echo("\t".join([r.id, r.name, _limit(r.rpm), _limit(r.tpm), _when(r.created_at),
                              _when(r.revoked_at) if r.revoked_at else "-"]))


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="the key's id (`uip keys list`), not the key"),
    database_url: str = typer.Option(None, envvar="UIP_DATABASE_URL"),
) -> None:
    """Revoke a key: the gateway refuses it with 401 from its next request on."""
    from uip.gateway.store import Store

    store = Store.open(database_url)
    try:
        done = store.revoke_key(key_id)
    finally:
        store.close()
    if done is None:
        typer.echo(f"no key has id {key_id!r} (see `uip keys list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {key_id}" if done else f"key {key_id} was already revoked",
               err=True)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_beside(grpc_port: int, port: int, workers: int = 1) -> subprocess.Popen:
    """`uip gateway` as a child process next to a tritonserver being started (`uip serve`)."""
    from uip.launch.command import LaunchError, port_in_use
    from uip.launch.lifeline import die_with_parent

    if port_in_use(port):
        raise LaunchError(f"Port {port} (gateway) is already in use; choose another with "
                          "--gateway-port N, or --no-gateway.")
    cmd = [sys.executable, "-m", "uip.gateway", "--triton-grpc", f"localhost:{grpc_port}",
           "--port", str(port), "--workers", str(workers)]
    # SIGTERM when `uip serve` dies by any signal: no gateway left holding the port
    return subprocess.Popen(cmd, env=dict(os.environ),
                            preexec_fn=die_with_parent(signal.SIGTERM))


TRITON = typer.Option("localhost:8001", help="Triton's gRPC HOST:PORT (the embedding model)")
SPEC = typer.Option(None, help="gateway spec (default: specs/gateway.yaml): rag settings")
DATABASE = typer.Option(None, envvar="UIP_DATABASE_URL",
                        help="SQLAlchemy URL (default: sqlite file in var/)")


def _vector_store(rags, ref: str, create: bool):
    row = rags.get_vector_store(ref) or rags.find_vector_store(ref)
    if row is None and create:
        row = rags.create_vector_store(ref, {})
        typer.echo(f"created vector store {row.id} ({ref!r})", err=True)
    if row is None:
        raise typer.BadParameter(f"no vector store with id or name {ref!r}")
    return row


@rag_app.command("add")
def rag_add(
    store: str = typer.Argument(..., help="vector store id (vs_...) or name (made if new)"),
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    triton_grpc: str = TRITON,
    spec: Path = SPEC,
    database_url: str = DATABASE,
) -> None:
    """Upload files and ingest them into a vector store here (chunk, embed through Triton,
    index), with a progress bar per file; the gateway serves them at once."""
    import asyncio

    from tqdm import tqdm

    from uip.gateway.documents import Chunking, extract_text
    from uip.gateway.rag_store import rag_of
    from uip.gateway.retrieval import ingest, triton_embedder
    from uip.gateway.spec import load_gateway_spec
    from uip.gateway.store import Store
    from uip.gateway.triton import Triton

    rag = load_gateway_spec(spec).rag
    chunking = Chunking(rag.chunk_tokens, rag.chunk_overlap_tokens)
    db = Store.open(database_url)
    rags = rag_of(db)
    failed = 0

    async def run() -> None:
        nonlocal failed
        triton = Triton(triton_grpc)
        embed = triton_embedder(triton, rag.embedding_model, 300)
        try:
            vs = _vector_store(rags, store, create=True)
            for path in files:
                data = path.read_bytes()
                if len(data) > rag.max_file_bytes:
                    typer.echo(f"{path}: larger than rag.max_file_bytes", err=True)
                    failed += 1
                    continue
                try:
                    extract_text(path.name, data)
                except ValueError as e:
                    typer.echo(f"{path}: {e}", err=True)
                    failed += 1
                    continue
                row = rags.create_file(path.name, "assistants", data)
                rags.attach(vs.id, row.id, chunking.strategy(), {})
                with tqdm(desc=path.name, unit="chunk", total=0) as bar:
                    def progress(n: int, total: int, bar=bar) -> None:
                        bar.total = total
                        bar.update(n)

                    error = await ingest(db, embed, rag, vs.id, row.id, chunking, progress)
                if error:
                    failed += 1
                    typer.echo(f"{path}: failed: {error['message']}", err=True)
                else:
                    typer.echo(f"{row.id}\t{path}")
        finally:
            await triton.close()

    try:
        asyncio.run(run())
    finally:
        db.close()
    if failed:
        raise typer.Exit(1)


@rag_app.command("search")
def rag_search(
    store: str = typer.Argument(..., help="vector store id (vs_...) or name"),
    query: str = typer.Argument(...),
    k: int = typer.Option(5, "-k", min=1, help="results"),
    ranker: str = typer.Option("hybrid", help="hybrid, vector or text"),
    triton_grpc: str = TRITON,
    spec: Path = SPEC,
    database_url: str = DATABASE,
) -> None:
    """Search a vector store: the best chunks, with their score and file."""
    import asyncio

    from uip.gateway.rag_store import rag_of
    from uip.gateway.retrieval import file_search, triton_embedder
    from uip.gateway.spec import load_gateway_spec
    from uip.gateway.store import Store
    from uip.gateway.triton import Triton

    rag = load_gateway_spec(spec).rag
    db = Store.open(database_url)

    async def run():
        triton = Triton(triton_grpc)
        try:
            vs = _vector_store(rag_of(db), store, create=False)
            return await file_search(db, [vs.id], query, k, ranker=ranker,
                                     embed=triton_embedder(triton, rag.embedding_model, 60))
        finally:
            await triton.close()

    from uip.gateway.errors import ApiError

    try:
        hits = asyncio.run(run())
    except ApiError as e:
        raise typer.BadParameter(e.message) from None
    finally:
        db.close()
    for h in hits:
        text = " ".join(h.text.split())
        typer.echo(f"{h.score:.4f}\t{h.filename}#{h.chunk_index}\t{text[:120]}")


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.add_typer(keys_app, name="keys")
    app.add_typer(rag_app, name="rag")
