"""`uip gateway --workers N`: N worker processes on one port, each with its own event loop.

Each worker binds its own listening socket with SO_REUSEPORT, so the kernel spreads the
connections over the workers by their address hash. One socket shared by all (uvicorn's own
`--workers`) lets whichever worker wakes first accept a whole burst: 31 of 32 connections
opened at once went to one worker when tried. A connection stays with its worker (keep-alive).

The supervisor (this process) migrates the database and fails the ingestions an earlier run
left unfinished once, before any worker starts; serves the per-key limits to all workers
(uip.gateway.limits.LimiterServer); restarts a worker that dies, unless it dies while starting
(then the others are stopped and the gateway exits 1), and fails the ingestions the dead worker
left in progress (a vector store file's `owner` is the pid of the worker ingesting it); and on
SIGTERM or SIGINT stops them all. A worker gets SIGTERM when the supervisor dies, even by SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("uip.gateway")
CONFIG_ENV = "UIP_GATEWAY_WORKER"  # the worker's settings (JSON), from its supervisor
STARTING_S = 10.0  # a worker that exits sooner after its start failed to start
BACKLOG = 2048  # uvicorn's default


def supervise(workers: int, triton_grpc: str, host: str, port: int, spec_path: Path | None,
              database_url: str | None, options: dict) -> int:
    """Run `workers` workers until SIGTERM/SIGINT; the exit status."""
    from uip.gateway.app import prepare
    from uip.gateway.limits import LimiterServer
    from uip.gateway.spec import load_gateway_spec
    from uip.gateway.store import default_url

    load_gateway_spec(spec_path)  # a bad spec fails here, once
    database_url = database_url or default_url()
    prepare(database_url)
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: stop.append(s))
    # 0700: only this user reaches it; named by pid (a supervisor killed by SIGKILL leaves it)
    folder = tempfile.mkdtemp(prefix=f"uip-gateway-{os.getpid()}-")
    procs: list[tuple[subprocess.Popen, float]] = []
    try:
        with LimiterServer(os.path.join(folder, "limits.sock")) as limits:
            cfg = {"triton_grpc": triton_grpc, "spec": str(spec_path) if spec_path else None,
                   "database_url": database_url, "limiter": limits.path, "host": host,
                   "port": port, "options": options, "supervisor": os.getpid()}
            env = {**os.environ, CONFIG_ENV: json.dumps(cfg)}

            def start() -> tuple[subprocess.Popen, float]:
                return subprocess.Popen([sys.executable, "-m", "uip.gateway.workers"],
                                        env=env), time.monotonic()

            procs = [start() for _ in range(workers)]
            while not stop:
                time.sleep(0.2)
                for i, (proc, started) in enumerate(procs):
                    if proc.poll() is None or stop:
                        continue
                    fail_ingestions(database_url, proc.pid)
                    if time.monotonic() - started < STARTING_S:
                        log.error("gateway worker %d exited %d while starting: stopping",
                                  proc.pid, proc.returncode)
                        return 1
                    log.warning("gateway worker %d exited %d: starting another", proc.pid,
                                proc.returncode)
                    procs[i] = start()
        return 0
    finally:
        _stop([p for p, _ in procs])
        shutil.rmtree(folder, ignore_errors=True)


def fail_ingestions(database_url: str, pid: int) -> None:
    """Mark failed the ingestions that the worker `pid`, which exited, left in progress (they
    would stay `in_progress` forever: no other worker resumes them)."""
    from uip.gateway.rag_store import rag_of
    from uip.gateway.store import Store

    try:
        store = Store.open(database_url, migrate=False)
        try:
            failed = rag_of(store).fail_unfinished(owner=pid)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - a database fault must not stop the supervisor
        log.exception("failing the ingestions of gateway worker %d", pid)
        return
    if failed:
        log.warning("gateway worker %d stopped during %d ingestion(s): marked failed", pid,
                    failed)


def _stop(procs: list[subprocess.Popen], timeout_s: float = 30.0) -> None:
    """SIGTERM (uvicorn finishes the requests in flight), SIGKILL after `timeout_s`."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def listening_socket(host: str, port: int) -> socket.socket:
    """This worker's own socket on the shared port (SO_REUSEPORT: one group per port and user)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def worker_main() -> None:
    """One worker: the app, then its socket (connections come once it can serve them)."""
    import uvicorn

    from uip.gateway.app import create_app
    from uip.gateway.limits import SharedLimiter
    from uip.launch.lifeline import exit_with_parent

    cfg = json.loads(os.environ.pop(CONFIG_ENV))
    exit_with_parent(signal.SIGTERM, cfg["supervisor"])
    app = create_app(cfg["triton_grpc"], Path(cfg["spec"]) if cfg["spec"] else None,
                     cfg["database_url"], limiter=SharedLimiter(cfg["limiter"]), prepared=True)
    config = uvicorn.Config(app, **cfg["options"])
    config.load()
    server = uvicorn.Server(config)
    server.run(sockets=[listening_socket(cfg["host"], cfg["port"])])
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    worker_main()
