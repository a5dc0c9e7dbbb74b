"""Run tritonserver: in the foreground for `uip serve`, in the background for tests and benches."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

from uip.launch.command import (
    LaunchError,
    Ports,
    check_ports,
    check_repository,
    find_tritonserver,
    free_port,
    prepare_backend_dir,
    server_command,
    server_env,
)

_UNAVAILABLE = re.compile(r"^\|\s*(\S+)\s*\|\s*\S+\s*\|\s*UNAVAILABLE:\s*(.*?)\s*\|?$")


def diagnose(log_lines: list[str], returncode: int) -> str:
    """One paragraph on why tritonserver stopped, from its own log."""
    failed = [m.groups() for line in log_lines if (m := _UNAVAILABLE.match(line.strip()))]
    if failed:
        parts = "; ".join(f"model '{n}' failed to load: {why}" for n, why in failed)
        return (f"tritonserver exited ({returncode}) because {parts}. Fix the model (its "
                "config.pbtxt, spec or artifact) or start without it "
                "(--model-control-mode=explicit --load-model=NAME), then try again.")
    for line in log_lines:
        if "Address already in use" in line or "failed to start" in line.lower():
            return (f"tritonserver exited ({returncode}): {line.strip()}. A port is taken; choose "
                    "others with --http-port/--grpc-port/--metrics-port.")
    errors = [ln.strip() for ln in log_lines if ln.startswith("E") or "error" in ln.lower()]
    tail = errors[-3:] or [ln.strip() for ln in log_lines[-3:]]
    return f"tritonserver exited ({returncode}). Its last errors: " + " / ".join(tail)


# tritonserver 2.51 can abort (boost::interprocess::lock_exception, heap corruption) when many
# Python backend stubs start at once on a busy machine: load one model at a time by default.
SAFE_DEFAULTS = ["--model-load-thread-count=1"]


def prepare(repository: Path, ports: Ports, extra: list[str] | None = None):
    """Checks, then the command line and environment to start tritonserver."""
    check_repository(repository)
    check_ports(ports)
    extra = list(extra or [])
    for flag in SAFE_DEFAULTS:
        if not any(e.startswith(flag.split("=")[0]) for e in extra):
            extra.append(flag)
    cmd = server_command(
        find_tritonserver(), repository.resolve(), prepare_backend_dir(), ports, extra
    )
    return cmd, server_env(ports=ports)


def run_foreground(repository: Path, ports: Ports, extra: list[str] | None = None) -> int:
    """Run tritonserver until it exits; SIGINT/SIGTERM are forwarded for a clean shutdown."""
    cmd, env = prepare(repository, ports, extra)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    tail = echo_output(proc)
    rc = proc.wait()
    if rc != 0 and rc not in (-signal.SIGINT, -signal.SIGTERM):
        raise LaunchError(diagnose(tail, rc))
    return 0


def echo_output(proc: subprocess.Popen, keep: int = 400) -> list[str]:
    """Copy a process's output to ours until it closes; returns its last `keep` lines."""
    tail: deque[str] = deque(maxlen=keep)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    return list(tail)


class TritonServer:
    """A tritonserver in the background on free ports, with its log in a file."""

    def __init__(self, repository: Path, log_path: Path, extra: list[str] | None = None,
                 ports: Ports | None = None):
        self.repository = repository
        self.log_path = log_path
        self.ports = ports or Ports(free_port(), free_port(), free_port())
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.ports.metrics}/metrics"

    def start(self, timeout: float = 600.0) -> TritonServer:
        cmd, env = prepare(self.repository, self.ports, self.extra)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(diagnose(self.log().splitlines(), self.proc.returncode))
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise LaunchError(f"tritonserver not ready after {timeout:.0f} s; log: {self.log_path}")

    def ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def model_states(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, LOADING...) from the repository index."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return {m["name"]: m.get("state", "") for m in json.load(r)}

    def wait_models(self, timeout: float = 600.0) -> dict[str, str]:
        """Wait until no model is loading; returns the final states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.model_states()
            if all(s in ("READY", "UNAVAILABLE") for s in states.values()) or (
                    time.monotonic() > deadline):
                return states
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
