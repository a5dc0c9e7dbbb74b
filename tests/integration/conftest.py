"""Session fixture: the real tritonserver on the default model repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uip import artifacts
from uip.artifacts.needed import needed
from uip.launcher import LaunchError
from uip.paths import DEFAULT_REPOSITORY
from uip.server import TritonServer

# Keep the server up when one model fails to load, so the other models' tests still run and
# test_repository_all_ready names the broken one.
TEST_FLAGS = ["--exit-on-error=false", "--strict-readiness=false", "--log-verbose=0"]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> TritonServer:
    repo = Path(os.environ.get("UIP_TEST_REPOSITORY", DEFAULT_REPOSITORY))
    artifacts.ensure(needed(repo))
    folder = tmp_path_factory.mktemp("tritonserver")
    # tritonserver 2.51 sometimes aborts at start-up when many Python stubs start at once on a
    # loaded machine (boost::interprocess::lock_exception, triton-inference-server/server#8882):
    # try again, on fresh ports, before failing the session.
    for attempt in range(3):
        srv = TritonServer(repo, folder / f"server-{attempt}.log", extra=TEST_FLAGS)
        try:
            srv.start()
            break
        except LaunchError:
            srv.stop()
            if attempt == 2 or "lock_exception" not in srv.log():
                raise
    srv.wait_models()
    yield srv
    srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "server" in getattr(item, "fixturenames", ()):
        srv = item._request.getfixturevalue("server") if hasattr(item, "_request") else None
        if srv is not None:
            report.sections.append(("tritonserver log (last 150 lines)",
                                    "\n".join(srv.log().splitlines()[-150:])))
