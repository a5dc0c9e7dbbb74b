"""No orphans: when `uip serve` or its tritonserver dies by SIGKILL, or their process group
gets SIGTERM as its launcher dies, every stub exits.

`uip serve` runs as a subprocess on two models (llm_engine, the decoupled stub seen left
running for 25 minutes, and embedding); its stubs are counted before the kill, then must all
be gone within 10 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.calls import model_ready

from uip.core.paths import DEFAULT_REPOSITORY
from uip.core.stubs import STUB
from uip.launch.command import free_port

MODELS = ("embedding", "llm_engine")


def _stubs(root: psutil.Process) -> list[psutil.Process]:
    out = []
    for p in root.children(recursive=True):
        try:
            if STUB in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(procs: list[psutil.Process]) -> list[int]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except psutil.Error:
            pass
    return alive


@pytest.mark.parametrize("victim", ["uip serve", "tritonserver", "process group"])
def test_stubs_exit_when_the_server_dies(tmp_path: Path, victim: str):
    http = free_port()
    uip = Path(sys.executable).parent / "uip"
    cmd = [str(uip), "serve", "--model-repository", str(DEFAULT_REPOSITORY),
           "--http-port", str(http), "--grpc-port", str(free_port()),
           "--metrics-port", str(free_port()), "--model-control-mode=explicit",
           *[f"--load-model={m}" for m in MODELS]]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group, for "process group"
    ours: list[psutil.Process] = []  # what this test started (never the session server)
    try:
        deadline = time.monotonic() + 300
        while not all(model_ready(f"localhost:{http}", m) for m in MODELS):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "uip serve did not get ready"
            time.sleep(0.5)
        root = psutil.Process(proc.pid)
        stubs = _stubs(root)
        assert len(stubs) == len(MODELS), [p.cmdline() for p in stubs]
        (server,) = [p for p in root.children() if p.name() == "tritonserver"]
        ours = [server, *stubs]
        if victim == "process group":
            # a CI timeout or Ctrl-C: SIGTERM to the whole group (the stubs ignore it), and a
            # launcher that dies of it at once (pytest does; tritonserver then gets SIGKILL)
            os.killpg(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid if victim == "uip serve" else server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive([*stubs, server]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive([*stubs, server]), f"still running 10 s after the kill of {victim}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for p in ours:  # should any be left
            try:
                p.kill()
            except psutil.Error:
                pass
