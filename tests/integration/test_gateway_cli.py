"""`uip serve` starts the gateway beside tritonserver (and stops it with it; here with two
workers); `uip gateway` refuses a taken port in one line; its workers are replaced when they
die and exit with their supervisor."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from uip.core.paths import PROJECT_ROOT
from uip.gateway.triton import RECONNECT_MAX_S
from uip.launch.command import free_port, port_in_use

UIP = [sys.executable, "-c", "from uip.cli import main; main()"]


def test_uip_serve_runs_the_gateway_beside_tritonserver(tmp_path):
    http, grpc, metrics, gw = (free_port() for _ in range(4))
    env = {**os.environ, "UIP_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    cmd = [*UIP, "serve", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port",
           str(metrics), "--gateway-port", str(gw), "--gateway-workers", "2",
           "--model-control-mode=explicit",
           "--load-model=embedding"]
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, ids = time.monotonic() + 180, []
        while "embedding" not in ids:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the gateway never listed the embedding model"
            time.sleep(0.5)
            try:
                r = httpx.get(f"http://127.0.0.1:{gw}/v1/models", timeout=2)
                ids = [m["id"] for m in r.json()["data"]]
            except httpx.HTTPError:
                continue
        # a worker whose channel tried Triton before it listened retries within RECONNECT_MAX_S
        time.sleep(RECONNECT_MAX_S * 1.2 + 0.3)  # (gRPC's jitter: 20 %)
        for _ in range(4):  # new connections: on either worker
            r = httpx.post(f"http://127.0.0.1:{gw}/v1/embeddings",
                           json={"model": "embedding", "input": "hi"}, timeout=30)
            assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        r = httpx.post(f"http://127.0.0.1:{gw}/v1/chat/completions", timeout=30,
                       json={"model": "llm_bls", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503, r.text  # listed in the spec, not loaded in Triton
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while port_in_use(gw):
        assert time.monotonic() < deadline, "the gateway outlived uip serve"
        time.sleep(0.2)


def test_uip_gateway_refuses_a_taken_port():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        r = subprocess.run([*UIP, "gateway", "--port", str(s.getsockname()[1])],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "already in use" in r.stderr


def test_triton_unreachable_is_503(tmp_path):
    from support.gateway import GatewayProcess

    gw = GatewayProcess(f"127.0.0.1:{free_port()}", f"sqlite:///{tmp_path / 'g.db'}",
                        tmp_path / "gateway.log").start()
    try:
        url = gw.base_url
        assert httpx.get(f"{url}/models").json()["data"] == []
        calls = [("chat/completions", {"model": "llm_bls", "messages": [
                     {"role": "user", "content": "x"}]}),
                 ("chat/completions", {"model": "llm_bls", "stream": True, "messages": [
                     {"role": "user", "content": "x"}]}),
                 ("completions", {"model": "llm", "prompt": "x"}),
                 ("embeddings", {"model": "embedding", "input": "x"}),
                 ("images/generations", {"prompt": "x"}),
                 ("responses", {"model": "llm_bls", "input": "x"})]
        for path, body in calls:
            r = httpx.post(f"{url}/{path}", json=body, timeout=30)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["type"] == "service_unavailable"
    finally:
        gw.stop()


def test_workers_are_restarted_and_die_with_their_supervisor(tmp_path):
    """`--workers 2` (no Triton needed): a worker killed after start-up is replaced; when the
    supervisor is SIGKILLed its workers exit and the port is free again."""
    import psutil
    from support.gateway import GatewayProcess

    from uip.gateway.workers import STARTING_S

    gw = GatewayProcess(f"127.0.0.1:{free_port()}", f"sqlite:///{tmp_path / 'g.db'}",
                        tmp_path / "gateway.log", workers=2).start()
    try:
        first = gw.worker_pids()
        assert len(first) == 2
        time.sleep(STARTING_S)  # then a worker's exit is not a failed start
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (len(gw.worker_pids()) == 2 and victim not in gw.worker_pids()):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{gw.port}/health").status_code == 200
        workers = [psutil.Process(p) for p in gw.worker_pids()]
        gw.proc.kill()
        gw.proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, "a worker outlived its supervisor"
        assert not port_in_use(gw.port)
    finally:
        gw.stop()
        for left in Path(tempfile.gettempdir()).glob(f"uip-gateway-{gw.proc.pid}-*"):
            shutil.rmtree(left)  # the limiter's socket folder: SIGKILL left it
