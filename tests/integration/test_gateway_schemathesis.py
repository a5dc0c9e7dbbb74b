"""A bounded schemathesis run against the gateway's /openapi.json: no 5xx for any input.

Limits of the test's gateway spec keep each generated request cheap (short generations, tiny
images), so the run is bounded in time as well as in examples.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.gateway import GatewayProcess

from uip.gateway.spec import DEFAULT_GATEWAY_SPEC

EXAMPLES = 20


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-fuzz")
    data = yaml.safe_load(DEFAULT_GATEWAY_SPEC.read_text())
    data["limits"].update(max_tokens=4, default_max_tokens=2, max_image_side=64,
                          max_image_steps=2, default_image_steps=1, max_images=1,
                          max_embedding_inputs=4, max_choices=2, stream_timeout_s=60)
    spec = folder / "gateway.yaml"
    spec.write_text(yaml.safe_dump(data))
    proc = GatewayProcess(server.grpc_url, f"sqlite:///{folder / 'fuzz.db'}",
                          folder / "gateway.log", spec).start()
    yield proc
    proc.stop()


def test_no_server_errors(gw, tmp_path):
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [str(st), "run", f"http://127.0.0.1:{gw.port}/openapi.json",
           "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES),
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--seed", "1",
           "--generation-deterministic", "--max-failures", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:] + gw.log()[-3000:]
