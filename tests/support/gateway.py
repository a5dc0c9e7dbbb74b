"""The gateway as a subprocess on a free port (`python -m uip.gateway`), for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from uip.launch.command import free_port


class GatewayProcess:
    def __init__(self, triton_grpc: str, database_url: str, log_path: Path,
                 spec: Path | None = None, port: int | None = None,
                 env: dict[str, str] | None = None):
        self.triton_grpc, self.database_url = triton_grpc, database_url
        self.log_path, self.spec = log_path, spec
        self.port = port or free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        cmd = [sys.executable, "-m", "uip.gateway", "--triton-grpc", self.triton_grpc,
               "--port", str(self.port), "--host", "127.0.0.1"]
        if self.spec is not None:
            cmd += ["--spec", str(self.spec)]
        env = {**os.environ, **self.env, "UIP_DATABASE_URL": self.database_url}
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway not up after {timeout} s: {self.log()}")

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
