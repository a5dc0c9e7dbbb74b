"""`stable_diffusion_xl` through the real tritonserver vs diffusers' StableDiffusionXLPipeline
on the tiny offline SDXL folder (sdxl-tiny): its optional spec rendered into a repository of
its own, one server for the module."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import start_test_server
from tritonclient.utils import InferenceServerException

from uip.clients.sd import infer_inputs
from uip.core.paths import DEFAULT_SPECS, artifacts_root

MODEL = "stable_diffusion_xl"
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, ugly"


@pytest.fixture(scope="module")
def xl_server(tmp_path_factory):
    from uip.repo.render import build_repository
    from uip.spec.schema import load_specs

    tmp = tmp_path_factory.mktemp("sdxl")
    repo = tmp / "repository"
    build_repository(load_specs(DEFAULT_SPECS / "optional"), repo)
    srv = start_test_server(repo, tmp)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(xl_server):  # the server built the artifact
    from uip.bench.sd_reference import DiffusersXLReference

    return DiffusersXLReference(artifacts_root() / "sdxl-tiny")


def _generate(mod, client, prompt=PROMPT, **opts) -> np.ndarray:
    out = client.infer(MODEL, infer_inputs(mod, prompt, **opts)).as_numpy("image")
    assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[0] == 1
    return out[0]


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_image_equals_sdxl_pipeline(xl_server, reference, scheduler):
    client = grpcclient.InferenceServerClient(xl_server.grpc_url)
    opts = dict(negative_prompt=NEGATIVE, steps=4, seed=1234, scheduler=scheduler)
    got = _generate(grpcclient, client, **opts)
    assert got.shape == (64, 64, 3)  # the UNet's sample size x the VAE factor
    want = reference(PROMPT, **opts)
    assert np.array_equal(got, want), f"max diff {np.abs(got.astype(int) - want).max()}"


def test_defaults_and_size_conditioning_over_http(xl_server, reference):
    """No negative prompt (zero embeddings), CFG 5.0, the folder's Euler; then SDXL's size
    conditioning at another size."""
    client = httpclient.InferenceServerClient(xl_server.http_url)
    got = _generate(httpclient, client, "a red castle", steps=3)
    assert np.array_equal(got, reference("a red castle", steps=3, seed=0))
    opts = dict(steps=3, seed=5, height=48, width=80, original_height=1024,
                original_width=768, crop_top=16, crop_left=32, target_height=48,
                target_width=80)
    got = _generate(httpclient, client, **opts)
    want = reference(PROMPT, steps=3, seed=5, height=48, width=80, original_size=(1024, 768),
                     crops_coords_top_left=(16, 32), target_size=(48, 80))
    assert got.shape == (48, 80, 3) and np.array_equal(got, want)


def test_concurrent_requests_within_two_levels(xl_server, reference):
    opts = [dict(negative_prompt=NEGATIVE, steps=5, seed=100 + i,
                 scheduler=("ddim", "euler", "dpm++")[i]) for i in range(3)]
    want = [reference(PROMPT, **o) for o in opts]
    barrier = threading.Barrier(len(opts))

    def one(o):
        client = grpcclient.InferenceServerClient(xl_server.grpc_url)
        inputs = infer_inputs(grpcclient, PROMPT, **o)
        barrier.wait()
        return client.infer(MODEL, inputs).as_numpy("image")[0]

    with ThreadPoolExecutor(len(opts)) as pool:
        got = list(pool.map(one, opts))
    for i in range(len(opts)):
        diff = np.abs(got[i].astype(int) - want[i].astype(int)).max()
        assert diff <= 2, f"request {i}: max diff {diff}/255"
        for j in range(len(opts)):
            if j != i:
                assert np.abs(got[i].astype(int) - want[j].astype(int)).max() > 2


@pytest.mark.parametrize("opts, message", [
    (dict(height=60), "'height' must be a multiple of 8, got 60"),
    (dict(width=2048), "'width' must be between 8 and 1536 pixels"),
    (dict(crop_left=-8), "'crop_left' must be >= 0, got -8"),
    (dict(original_height=10000), "'original_height' must be <= 8192"),
    (dict(scheduler="karras"), "'scheduler' must be one of ddim"),
])
def test_invalid_arguments(xl_server, opts, message):
    client = grpcclient.InferenceServerClient(xl_server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, infer_inputs(grpcclient, PROMPT, steps=2, **opts))
    assert message in info.value.message()
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"


def test_server_stays_healthy(xl_server):
    client = httpclient.InferenceServerClient(xl_server.http_url)
    assert client.is_server_live() and client.is_model_ready(MODEL)
    log = xl_server.log()
    assert "uip/sd/" not in log and "uip/triton/models/" not in log  # no tracebacks of ours
