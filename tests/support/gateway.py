"""The gateway as a subprocess on a free port (`python -m uip.gateway`), for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from uip.launch.command import free_port


class GatewayProcess:
    def __init__(self, triton_grpc: str, database_url: str, log_path: Path,
                 spec: Path | None = None, port: int | None = None,
                 env: dict[str, str] | None = None, workers: int = 1):
        self.triton_grpc, self.database_url = triton_grpc, database_url
        self.log_path, self.spec = log_path, spec
        self.port = port or free_port()
        self.env = env or {}
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        cmd = [sys.executable, "-m", "uip.gateway", "--triton-grpc", self.triton_grpc,
               "--port", str(self.port), "--host", "127.0.0.1"]
        if self.spec is not None:
            cmd += ["--spec", str(self.spec)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        env = {**os.environ, **self.env, "UIP_DATABASE_URL": self.database_url}
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    if self.workers == 1 or len(self.worker_pids()) == self.workers:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway not up after {timeout} s: {self.log()}")

    def _sockets(self, status: str) -> list[tuple[int, object]]:
        """(worker pid, psutil connection) of the workers' sockets on the gateway's port."""
        out = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                out += [(child.pid, c) for c in child.net_connections("tcp")
                        if c.status == status and c.laddr.port == self.port]
            except psutil.Error:  # exited meanwhile
                pass
        return out

    def worker_pids(self) -> set[int]:
        """The worker processes (of `--workers N`) listening on the gateway's port."""
        return {pid for pid, _ in self._sockets(psutil.CONN_LISTEN)}

    def serving_workers(self) -> set[int]:
        """The workers that hold a client connection now."""
        return {pid for pid, _ in self._sockets(psutil.CONN_ESTABLISHED)}

    def worker_of(self, client_port: int) -> int | None:
        """The worker that holds the connection from the client's local port `client_port`."""
        for pid, c in self._sockets(psutil.CONN_ESTABLISHED):
            if c.raddr and c.raddr.port == client_port:
                return pid
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()
