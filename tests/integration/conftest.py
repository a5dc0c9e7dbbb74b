"""Session fixture: the real tritonserver on the default model repository."""

from __future__ import annotations

import support.interpreter  # noqa: F401 - first: Triton's interpreter mode on a CPU

# isort: split
import os
import time
from pathlib import Path

import psutil
import pytest

from uip import artifacts
from uip.core.paths import DEFAULT_REPOSITORY
from uip.launch.command import LaunchError
from uip.launch.server import TritonServer
from uip.repo.needed import needed, read_config

# Keep the server up when one model fails to load, so the other models' tests still run and
# test_repository_all_ready names the broken one.
TEST_FLAGS = ["--exit-on-error=false", "--strict-readiness=false", "--log-verbose=0"]


def start_test_server(repo: Path, folder: Path, extra: list[str] | None = None) -> TritonServer:
    """A tritonserver on `repo` with every stub alive (retried, see below); log in `folder`."""
    artifacts.ensure(needed(repo))
    # tritonserver 2.51 sometimes aborts at start-up when many Python stubs start at once on a
    # loaded machine (boost::interprocess::lock_exception, triton-inference-server/server#8882):
    # try again, on fresh ports, before failing the session.
    for attempt in range(3):
        srv = TritonServer(repo, folder / f"server-{attempt}.log",
                           extra=TEST_FLAGS if extra is None else extra)
        try:
            srv.start()
            srv.wait_models()
        except LaunchError:
            srv.stop()
            if attempt == 2 or "lock_exception" not in srv.log():
                raise
            continue
        if stubs_alive(srv, repo):
            return srv
        # A stub that died right after loading leaves its model READY but deaf (seen in 2.51:
        # a segfault in libpython during start-up). Start again rather than hang every test.
        srv.stop()
    raise RuntimeError(f"a Python backend stub died after start-up three times; see {folder}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> TritonServer:
    repo = Path(os.environ.get("UIP_TEST_REPOSITORY", DEFAULT_REPOSITORY))
    srv = start_test_server(repo, tmp_path_factory.mktemp("tritonserver"))
    yield srv
    srv.stop()


def expected_stubs(repo: Path) -> int:
    """Python backend stub processes the repository should run: one per model instance."""
    total = 0
    for cfg_path in repo.glob("*/config.pbtxt"):
        cfg = read_config(cfg_path)
        if cfg.backend == "python":
            total += sum(g.count or 1 for g in cfg.instance_group) or 1
    return total


def live_stubs(srv: TritonServer) -> int:
    """The server's Python backend stubs still running (a dead one is a zombie until reaped)."""
    count = 0
    for child in psutil.Process(srv.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and \
                    "triton_python_backend_stub" in " ".join(child.cmdline()):
                count += 1
        except psutil.Error:  # exited while we looked
            pass
    return count


def stubs_alive(srv: TritonServer, repo: Path, settle: float = 5.0) -> bool:
    """All the server's stubs are still running a few seconds after every model loaded."""
    time.sleep(settle)
    return live_stubs(srv) == expected_stubs(repo) and srv.proc.poll() is None


def poll(fetch, done, timeout: float = 5.0, interval: float = 0.05):
    """Call `fetch` until `done(value)` or `timeout` seconds; the last value (Triton records
    statistics just after it sends the responses, so a test reads them this way)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "server" in getattr(item, "fixturenames", ()):
        srv = item._request.getfixturevalue("server") if hasattr(item, "_request") else None
        if srv is not None:
            report.sections.append(("tritonserver log (last 150 lines)",
                                    "\n".join(srv.log().splitlines()[-150:])))
