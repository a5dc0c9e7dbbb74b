"""`uip gateway` (the OpenAI-compatible gateway alone) and `uip keys create|list|revoke`."""

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


def gateway(
    triton_grpc: str = typer.Option("localhost:8001", help="Triton's gRPC HOST:PORT"),
    port: int = typer.Option(DEFAULT_PORT, help="port of the gateway (base URL /v1)"),
    host: str = typer.Option("0.0.0.0", help="address to listen on"),
    spec: Path = typer.Option(None, help="gateway spec (default: specs/gateway.yaml)"),
    database_url: str = typer.Option(None, envvar="UIP_DATABASE_URL",
                                     help="SQLAlchemy URL (default: sqlite file in var/)"),
) -> None:
    """Run the OpenAI-compatible gateway against a Triton server."""
    from uip.gateway.app import serve
    from uip.launch.command import LaunchError, port_in_use

    if port_in_use(port):
        raise LaunchError(f"Port {port} (gateway) is already in use; choose another with "
                          "--port N (or --gateway-port N with `uip serve`).")
    serve(triton_grpc, host, port, spec, database_url)


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


def start_beside(grpc_port: int, port: int) -> subprocess.Popen:
    """`uip gateway` as a child process next to a tritonserver being started (`uip serve`)."""
    from uip.launch.command import LaunchError, port_in_use
    from uip.launch.lifeline import die_with_parent

    if port_in_use(port):
        raise LaunchError(f"Port {port} (gateway) is already in use; choose another with "
                          "--gateway-port N, or --no-gateway.")
    cmd = [sys.executable, "-m", "uip.gateway", "--triton-grpc", f"localhost:{grpc_port}",
           "--port", str(port)]
    # SIGTERM when `uip serve` dies by any signal: no gateway left holding the port
    return subprocess.Popen(cmd, env=dict(os.environ),
                            preexec_fn=die_with_parent(signal.SIGTERM))


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.add_typer(keys_app, name="keys")
