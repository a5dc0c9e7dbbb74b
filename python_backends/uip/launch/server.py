"""Run tritonserver: in the foreground for `uip serve`, in the background for tests and benches."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

from uip.launch.admin import KEY_ENV, AdminApi, headers, restricted_flags
from uip.launch.admin import admin_key as _admin_key
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
from uip.launch.lifeline import die_with_parent
from uip.launch.watchdog import Watchdog

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
# Explicit model control (every model loaded at start) lets the watchdog reload a model.
SAFE_DEFAULTS = ["--model-load-thread-count=1", "--model-control-mode=explicit"]
LOAD_ALL = "--load-model=*"


def _flag(extra: list[str], name: str) -> str | None:
    """The value of `--name=value` in extra (the last one), None when absent."""
    values = [e.split("=", 1)[1] for e in extra if e.startswith(f"{name}=")]
    return values[-1] if values else None


def server_flags(extra: list[str] | None, admin_key: str | None = None,
                 open_apis: tuple[str, ...] = ()) -> list[str]:
    """The user's flags plus ours: safe defaults, every model loaded under explicit control
    (unless the user picked models or another mode), admin APIs behind `admin_key`."""
    extra = list(extra or [])
    for flag in SAFE_DEFAULTS:
        if _flag(extra, flag.split("=")[0]) is None:
            extra.append(flag)
    if _flag(extra, "--model-control-mode") == "explicit" and _flag(extra, "--load-model") is None:
        extra.append(LOAD_ALL)
    if admin_key and not any(e.startswith(("--http-restricted-api", "--grpc-restricted-protocol"))
                             for e in extra):
        extra += restricted_flags(admin_key, open_apis)
    return extra


def supervised(extra: list[str]) -> bool:
    """The watchdog can reload models only under explicit model control."""
    return _flag(extra, "--model-control-mode") == "explicit"


def prepare(repository: Path, ports: Ports, extra: list[str] | None = None,
            admin_key: str | None = None, open_apis: tuple[str, ...] = ()):
    """Checks, then the command line and environment to start tritonserver."""
    check_repository(repository)
    check_ports(ports)
    cmd = server_command(find_tritonserver(), repository.resolve(), prepare_backend_dir(), ports,
                         server_flags(extra, admin_key, open_apis))
    env = server_env(ports=ports)
    if admin_key:  # the models' own admin requests (LoRA control) check the same key
        env[KEY_ENV] = admin_key
    return cmd, env


def _printer(msg: str) -> None:
    print(msg, flush=True)


MAX_RESTARTS = 3  # tritonserver crashes healed per RESTART_WINDOW_S; more: uip serve fails
RESTART_WINDOW_S = 600.0
SERVING = "Started GRPCInferenceService"  # in the log once tritonserver serves


def run_foreground(repository: Path, ports: Ports, extra: list[str] | None = None,
                   admin_key: str | None = None, max_restarts: int = MAX_RESTARTS) -> int:
    """Run tritonserver until it exits, with the watchdog; SIGINT/SIGTERM are forwarded for a
    clean shutdown. tritonserver is SIGKILLed if this process dies (lifeline). A tritonserver
    that dies on its own (e.g. Triton 2.51's `boost::interprocess::lock_exception` abort when
    a stub is killed inside the Python backend's shared-memory lock) after it had started
    serving is started again, at most `max_restarts` times per RESTART_WINDOW_S; otherwise
    its diagnosis is raised."""
    cmd, env = prepare(repository, ports, extra, admin_key)
    stopping: list[int] = []
    current: list[tuple[subprocess.Popen, Watchdog | None]] = []

    def forward(signum, _frame):
        stopping.append(signum)
        for proc, dog in current:
            if dog is not None:
                dog.stop()
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(cmd, env, repository, ports, admin_key, max_restarts, stopping, current)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _serve(cmd, env, repository: Path, ports: Ports, admin_key: str | None, max_restarts: int,
           stopping: list[int], current: list) -> int:
    restarts: deque[float] = deque()
    while True:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, preexec_fn=die_with_parent())
        dog = None
        if supervised(cmd):
            dog = Watchdog(proc.pid, AdminApi(f"localhost:{ports.http}", admin_key), repository,
                           log=_printer)
            dog.start()
        current[:] = [(proc, dog)]
        tail = echo_output(proc)
        rc = proc.wait()
        if dog is not None:
            dog.stop()
        if rc == 0 or stopping:
            return 0
        if not any(SERVING in line for line in tail):  # failed to start: not a crash
            raise LaunchError(diagnose(tail, rc))
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW_S:
            restarts.popleft()
        if len(restarts) >= max_restarts:
            raise LaunchError(diagnose(tail, rc))
        restarts.append(now)
        _printer(f"uip serve: tritonserver exited with {rc}; starting it again "
                 f"({len(restarts)} of {max_restarts} in {RESTART_WINDOW_S:.0f} s)")


def echo_output(proc: subprocess.Popen, keep: int = 400) -> list[str]:
    """Copy a process's output to ours until it closes; returns its last `keep` lines."""
    tail: deque[str] = deque(maxlen=keep)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    return list(tail)


class TritonServer:
    """A tritonserver in the background on free ports, with its log in a file, supervised by
    the watchdog and with its admin APIs behind `admin_key` (generated when not given; the
    APIs in `open_apis` stay open, e.g. model-config for perf_analyzer over gRPC)."""

    def __init__(self, repository: Path, log_path: Path, extra: list[str] | None = None,
                 ports: Ports | None = None, admin_key: str | None = None,
                 open_apis: tuple[str, ...] = ()):
        self.repository = repository
        self.log_path = log_path
        self.ports = ports or Ports(free_port(), free_port(), free_port())
        self.extra = extra or []
        self.admin_key = admin_key or _admin_key()[0]
        self.open_apis = open_apis
        self.proc: subprocess.Popen | None = None
        self.watchdog: Watchdog | None = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.ports.metrics}/metrics"

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers (HTTP) or metadata (gRPC) for the restricted APIs (statistics, ...)."""
        return headers(self.admin_key, protocol)

    @property
    def admin(self) -> AdminApi:
        return AdminApi(self.http_url, self.admin_key)

    def _log_line(self, msg: str) -> None:
        self._log.write(msg + "\n")
        self._log.flush()

    def start(self, timeout: float = 600.0) -> TritonServer:
        cmd, env = prepare(self.repository, self.ports, self.extra, self.admin_key,
                           self.open_apis)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=die_with_parent())
        if supervised(cmd):
            self.watchdog = Watchdog(self.proc.pid, self.admin, self.repository,
                                     log=self._log_line)
            self.watchdog.start()
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
        return self.admin.states()

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
        if self.watchdog is not None:
            self.watchdog.stop()
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
