"""Bounded queues: 4 x the bound concurrent requests on a model with a small one.

`stable_diffusion` (which has no Triton queue: its step batcher takes every request at once
and bounds what waits) rendered with `max_batch` 1 and `max_waiting` 1, so 2 requests fit:
the surplus gets HTTP 503 (UNAVAILABLE, "limit max_waiting") within 1 s, the rest complete
with the right image, and the server stays healthy.
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import TEST_FLAGS, start_test_server
from tritonclient.utils import InferenceServerException

from uip.clients.sd import infer_inputs
from uip.core.paths import DEFAULT_SPECS
from uip.repo.needed import read_config
from uip.repo.render import build_repository
from uip.spec.schema import DeploymentSpec, load_spec

QUEUE = 2
OPTS = dict(steps=4, height=64, width=64, seed=3)


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overload")
    data = copy.deepcopy(load_spec(DEFAULT_SPECS / "stable_diffusion.yaml").model_dump())
    models = [m["name"] for m in data["models"]]
    for m in data["models"]:
        if m["name"] == "stable_diffusion":
            m["parameters"].update(max_batch=1, max_waiting=QUEUE - 1)
    build_repository([DeploymentSpec.model_validate(data)], folder / "repo")
    srv = start_test_server(folder / "repo", folder, [*TEST_FLAGS, "--exit-timeout-secs=5"])
    cfg = read_config(folder / "repo" / "stable_diffusion" / "config.pbtxt")
    assert cfg.parameters["max_waiting"].string_value == str(QUEUE - 1)
    yield srv, models
    srv.stop()


def _one(url: str, barrier: threading.Barrier):
    client = httpclient.InferenceServerClient(url, network_timeout=300)
    inputs = infer_inputs(httpclient, "a red cube", **OPTS)
    barrier.wait()
    t0 = time.monotonic()
    try:
        image = client.infer("stable_diffusion", inputs).as_numpy("image")
        return "ok", time.monotonic() - t0, image
    except InferenceServerException as e:
        return e.status(), time.monotonic() - t0, e.message()


def test_surplus_is_refused_at_once_and_the_rest_served(small_queue):
    srv, _ = small_queue
    n = 4 * QUEUE
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: _one(srv.http_url, barrier), range(n)))
    ok = [r for r in results if r[0] == "ok"]
    refused = [r for r in results if r[0] != "ok"]
    assert refused, f"nothing refused with {n} requests on a queue of {QUEUE}: {results}"
    assert all(r[0] == "503" for r in refused), refused
    assert all("limit max_waiting=1" in r[2] for r in refused), refused
    assert max(r[1] for r in refused) < 1.0, [r[1] for r in refused]
    assert len(ok) >= QUEUE, results  # one running plus a full queue are served
    reference = httpclient.InferenceServerClient(srv.http_url).infer(
        "stable_diffusion", infer_inputs(httpclient, "a red cube", **OPTS)).as_numpy("image")
    for r in ok:
        np.testing.assert_allclose(r[2].astype(int), reference.astype(int), atol=2)
    assert srv.ready() and all(s == "READY" for s in srv.model_states().values())
    print(f"{len(ok)} served, {len(refused)} refused in at most "
          f"{max(r[1] for r in refused) * 1000:.0f} ms")
