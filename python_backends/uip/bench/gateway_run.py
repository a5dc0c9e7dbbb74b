"""Running `uip bench gateway`: a tritonserver (unless --url) and a gateway beside it, then
the comparison of uip.bench.gateway, written as CSV and markdown under benchmarks/results/.

`cpus` pins the three parties to their own cores ("SERVER:GATEWAY:CLIENT" CPU lists such as
"0-11:12-13:14-15", or "auto" on 8 cores or more): each process is started with the bench's
own affinity set to its list, so it and all its threads and children inherit it."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import typer

from uip.bench.gateway import compare, verdict
from uip.bench.report import markdown, write_csv

REQUESTS_PER_STREAM = 3
MAX_TOKENS = 64


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def placement(cpus: str) -> dict[str, set[int]] | None:
    """Party -> CPUs: "" = no pinning; "auto" = client and gateway 2 cores each (the last
    ones), the server the rest, on a machine of 8 cores or more (else no pinning)."""
    if not cpus:
        return None
    if cpus == "auto":
        have = sorted(os.sched_getaffinity(0))
        if len(have) < 8:
            return None
        return {"server": set(have[:-4]), "gateway": set(have[-4:-2]),
                "client": set(have[-2:])}
    parts = cpus.split(":")
    if len(parts) != 3:
        raise typer.BadParameter("--cpus takes SERVER:GATEWAY:CLIENT CPU lists or 'auto'")
    return dict(zip(("server", "gateway", "client"), map(_cpu_list, parts), strict=True))


def _pin(where: dict[str, set[int]] | None, party: str) -> None:
    """This process's affinity (inherited by what it starts next)."""
    if where is not None:
        os.sched_setaffinity(0, where[party])


def gateway_workers(workers: int | None, where: dict[str, set[int]] | None) -> int:
    """`--gateway-workers`, by default one per core of the gateway's CPU list when pinned."""
    if workers is not None:
        return workers
    return len(where["gateway"]) if where is not None else 1


def _start_gateway(grpc_url: str, folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    from uip.launch.command import free_port

    port = free_port()
    env = {**os.environ, "UIP_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "uip.gateway", "--triton-grpc", grpc_url,
                             "--port", str(port), "--host", "127.0.0.1",
                             "--workers", str(workers)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the gateway did not start within 60 s")


def run_gateway_bench(concurrency: str, url: str, model_repository: Path, out: Path,
                      label: str, rounds: int = 2, requests: int = REQUESTS_PER_STREAM,
                      max_tokens: int = MAX_TOKENS, cpus: str = "",
                      workers: int | None = None) -> None:
    from uip import artifacts
    from uip.launch.server import TritonServer
    from uip.repo.needed import needed

    levels = [int(c) for c in concurrency.split(",")]
    label = label or platform.node().split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gateway-{label}"
    folder = Path(tempfile.mkdtemp(prefix="uip-bench-gateway-"))
    server = None
    where = placement(cpus)
    workers = gateway_workers(workers, where)
    if where is not None:
        typer.echo("pinned: " + ", ".join(f"{k} {min(v)}-{max(v)}" for k, v in where.items()))
    typer.echo(f"gateway workers: {workers}")
    _pin(where, "server")
    if not url:
        models = ["llm_bls", "llm_engine"]
        artifacts.ensure(needed(model_repository, models))
        flags = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
        server = TritonServer(model_repository, stem.with_suffix(".server.log"), flags).start()
        url = server.grpc_url
    _pin(where, "gateway")
    gateway, gateway_url = _start_gateway(url, folder, workers)
    _pin(where, "client")
    try:
        rows = asyncio.run(compare(url, gateway_url, levels, requests, max_tokens, rounds,
                                   gateway_pid=gateway.pid,
                                   server_pid=server.proc.pid if server and server.proc
                                   else None))
    finally:
        gateway.terminate()
        gateway.wait(30)
        if server:
            server.stop()
    for row in rows:
        row["gateway_workers"] = workers
    write_csv(stem.with_suffix(".csv"), rows)
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    typer.echo(table)
    lines = verdict(rows)
    stem.with_suffix(".verdict.txt").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))
    typer.echo(f"wrote {stem}.csv/.md/.verdict.txt")
