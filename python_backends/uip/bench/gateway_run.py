"""Running `uip bench gateway`: a tritonserver (unless --url) and a gateway beside it, then
the comparison of uip.bench.gateway, written as CSV and markdown under benchmarks/results/."""

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

from uip.bench.gateway import compare
from uip.bench.report import markdown, write_csv

REQUESTS_PER_STREAM = 3
MAX_TOKENS = 64


def _start_gateway(grpc_url: str, folder: Path) -> tuple[subprocess.Popen, str]:
    from uip.launch.command import free_port

    port = free_port()
    env = {**os.environ, "UIP_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "uip.gateway", "--triton-grpc", grpc_url,
                             "--port", str(port), "--host", "127.0.0.1"], env=env)
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
                      label: str) -> None:
    from uip import artifacts
    from uip.launch.server import TritonServer
    from uip.repo.needed import needed

    levels = [int(c) for c in concurrency.split(",")]
    label = label or platform.node().split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gateway-{label}"
    folder = Path(tempfile.mkdtemp(prefix="uip-bench-gateway-"))
    server = None
    if not url:
        artifacts.ensure(needed(model_repository))
        flags = ["--model-control-mode=explicit", "--load-model=llm_bls",
                 "--load-model=llm_engine"]
        server = TritonServer(model_repository, stem.with_suffix(".server.log"), flags).start()
        url = server.grpc_url
    gateway, gateway_url = _start_gateway(url, folder)
    try:
        rows = asyncio.run(compare(url, gateway_url, levels, REQUESTS_PER_STREAM, MAX_TOKENS,
                                   gateway_pid=gateway.pid,
                                   server_pid=server.proc.pid if server and server.proc
                                   else None))
    finally:
        gateway.terminate()
        gateway.wait(30)
        if server:
            server.stop()
    write_csv(stem.with_suffix(".csv"), rows)
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    typer.echo(table)
    typer.echo(f"wrote {stem}.csv/.md")
