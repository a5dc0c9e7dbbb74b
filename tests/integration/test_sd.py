"""`stable_diffusion` through the real tritonserver vs diffusers' StableDiffusionPipeline.

Tiny model, 64x64, a few steps: every image served alone must equal the pipeline's exactly
(sub-models separate, the default, and co-located in the orchestrator); concurrent requests,
stepped together by the one stable_diffusion instance, within 2/255 per pixel.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import poll
from tritonclient.utils import InferenceServerException

from uip.bench.sd import loop_totals
from uip.clients.sd import infer_inputs
from uip.core.paths import PROJECT_ROOT, artifacts_root
from uip.sd.schedulers import SCHEDULERS

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, ugly"
STEPS = 4
MODELS = ("stable_diffusion", "sd_text_encoder", "sd_unet", "sd_vae_decoder")


@pytest.fixture(scope="module")
def reference():
    from uip.bench.sd_reference import DiffusersReference

    return DiffusersReference(artifacts_root() / "sd-tiny")


@pytest.fixture(scope="module")
def grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def _client(server, protocol):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _generate(mod, client, prompt=PROMPT, **opts) -> np.ndarray:
    out = client.infer("stable_diffusion", infer_inputs(mod, prompt, **opts)).as_numpy("image")
    assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[0] == 1 and out.shape[3] == 3
    return out[0]


def _unet_executions(grpc, server) -> tuple[int, int]:
    hdrs = server.admin_headers("grpc")  # statistics is a restricted API
    s = grpc.get_inference_statistics("sd_unet", headers=hdrs).model_stats[0]
    return s.execution_count, s.inference_count


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_equals_diffusers(server, reference, protocol, scheduler):
    mod, client = _client(server, protocol)
    opts = dict(negative_prompt=NEGATIVE, steps=STEPS, guidance_scale=7.5, seed=1234,
                height=64, width=64, scheduler=scheduler)
    got = _generate(mod, client, **opts)
    want = reference(PROMPT, **opts)
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, want), f"max diff {np.abs(got.astype(int) - want).max()}"


def test_defaults_equal_diffusers_defaults(server, reference):
    """Only a prompt: 50 steps, CFG 7.5, seed 0, the artifact's scheduler and size."""
    mod, client = _client(server, "http")
    got = _generate(mod, client, "a red castle")
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, reference("a red castle", seed=0))


def test_other_sizes_and_no_guidance(server, reference):
    mod, client = _client(server, "grpc")
    opts = dict(steps=3, guidance_scale=1.0, seed=5, height=48, width=96, scheduler="euler_a")
    got = _generate(mod, client, **opts)
    assert got.shape == (48, 96, 3)
    assert np.array_equal(got, reference(PROMPT, **opts))


def _timesteps(reference, scheduler: str, steps: int) -> int:
    sched = reference.scheduler(scheduler)
    sched.set_timesteps(steps)
    return len(sched.timesteps)  # UNet calls of one request (PNDM repeats one: steps + 1)


def _concurrent(server, opts: list[dict]) -> list[np.ndarray]:
    """One request per options dict, all at once (one gRPC client each)."""
    barrier = threading.Barrier(len(opts))

    def one(o):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = infer_inputs(grpcclient, PROMPT, **o)
        barrier.wait()
        return client.infer("stable_diffusion", inputs).as_numpy("image")[0]

    with ThreadPoolExecutor(len(opts)) as pool:
        return list(pool.map(one, opts))


def _check_concurrent(server, grpc, reference, schedulers, steps=6):
    """6 requests at once into the ONE stable_diffusion instance: one sd_unet call per
    iteration for all of them, each image within 2/255 of the pipeline's and its own."""
    opts = [dict(negative_prompt=NEGATIVE, steps=steps, seed=100 + i, height=64, width=64,
                 scheduler=schedulers[i % len(schedulers)]) for i in range(6)]
    want = [reference(PROMPT, **o) for o in opts]
    before = _unet_executions(grpc, server) if grpc is not None else None
    loop_before = loop_totals(server.metrics_url, "stable_diffusion")
    got = _concurrent(server, opts)
    for i in range(len(opts)):
        diff = np.abs(got[i].astype(int) - want[i].astype(int)).max()
        assert diff <= 2, f"request {i}: max diff {diff}/255"
        for j in range(len(opts)):  # each got its own image, not a neighbour's
            if j != i:
                assert np.abs(got[i].astype(int) - want[j].astype(int)).max() > 2
    calls = [_timesteps(reference, o["scheduler"], steps) for o in opts]
    bound = max(calls) * -(-len(opts) // _max_batch(server))
    # the loop's own counters, whatever the placement (co-located: there is no sd_unet)
    loop = poll(lambda: loop_totals(server.metrics_url, "stable_diffusion"),
                lambda t: t[1] - loop_before[1] >= 2 * sum(calls), timeout=10)
    unet_calls, rows = loop[0] - loop_before[0], loop[1] - loop_before[1]
    assert rows == 2 * sum(calls), f"{rows} UNet rows for {sum(calls)} CFG steps"
    assert unet_calls <= bound, f"{unet_calls} UNet calls of the loop (bound {bound})"
    if before is None:
        return
    after = poll(lambda: _unet_executions(grpc, server),
                 lambda a: a[1] - before[1] >= 2 * sum(calls))
    executions, inferences = after[0] - before[0], after[1] - before[1]
    assert inferences == 2 * sum(calls)  # every step of every request: its [neg, pos] pair
    # requests sent together start together: one sd_unet call per iteration for all of them
    assert executions <= bound, \
        f"{executions} sd_unet executions for 6 requests of {max(calls)} steps (bound {bound})"


def _max_batch(server) -> int:
    """The stable_diffusion spec's `max_batch` (requests stepped together), as served."""
    cfg = httpclient.InferenceServerClient(server.http_url).get_model_config(
        "stable_diffusion", headers=server.admin_headers("http"))  # a restricted API
    return int(cfg["parameters"]["max_batch"]["string_value"])


def test_concurrent_requests_share_unet_calls(server, grpc, reference):
    _check_concurrent(server, grpc, reference, ["ddim"])
    _check_concurrent(server, grpc, reference, ["ddim", "dpm++", "euler_a"])


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    """stable_diffusion alone, with the three networks in its own process."""
    import shutil

    from uip.core.paths import DEFAULT_REPOSITORY
    from uip.launch.server import TritonServer

    repo = tmp_path_factory.mktemp("sd-colocated") / "repository"
    shutil.copytree(DEFAULT_REPOSITORY / "stable_diffusion", repo / "stable_diffusion")
    cfg = repo / "stable_diffusion" / "config.pbtxt"
    text = cfg.read_text()
    assert text.count('string_value: "separate"') == 1
    text = text.replace('string_value: "separate"', 'string_value: "colocated"')
    # two requests stepped together: test_colocated_cancel_frees_a_slot fills both slots
    assert text.count('key: "max_batch"\n  value {\n    string_value: "8"') == 1
    cfg.write_text(text.replace('key: "max_batch"\n  value {\n    string_value: "8"',
                                'key: "max_batch"\n  value {\n    string_value: "2"'))
    srv = TritonServer(repo, repo.parent / "server.log", extra=["--log-verbose=0"]).start()
    srv.wait_models()
    yield srv
    srv.stop()


@pytest.mark.parametrize("scheduler", ["pndm", "dpm++", "euler_a"])
def test_colocated_image_equals_diffusers(colocated, reference, scheduler):
    mod, client = _client(colocated, "grpc")
    opts = dict(negative_prompt=NEGATIVE, steps=STEPS, seed=77, height=64, width=64,
                scheduler=scheduler)
    got = _generate(mod, client, **opts)
    assert np.array_equal(got, reference(PROMPT, **opts))


def test_colocated_concurrent_requests(colocated, reference):
    _check_concurrent(colocated, None, reference, ["ddim", "pndm"])
    log = colocated.log()
    assert "uip/sd/" not in log and "uip/triton/models/sd" not in log


def test_colocated_cancel_frees_a_slot(colocated):
    """max_batch 2, both slots held by long requests: a third waits until a cancel frees one,
    then runs while the other long request goes on."""
    assert _max_batch(colocated) == 2
    client = grpcclient.InferenceServerClient(colocated.grpc_url)
    done: dict[str, threading.Event] = {}
    errors: dict[str, object] = {}

    def send(name, **opts):
        done[name] = threading.Event()

        def callback(result, error, name=name):
            errors[name] = error
            done[name].set()
        return client.async_infer("stable_diffusion", infer_inputs(grpcclient, PROMPT, **opts),
                                  callback=callback)

    long = dict(steps=1000, scheduler="euler", height=64, width=64)
    a = send("a", seed=1, **long)
    time.sleep(0.5)  # arrival order a, b, c (sent together they may reach the batcher in any)
    b = send("b", seed=2, **long)
    time.sleep(0.5)
    send("c", steps=2, seed=3, height=64, width=64)
    time.sleep(2.0)
    assert not (done["a"].is_set() or done["b"].is_set()), errors
    assert not done["c"].is_set(), "a third request ran while max_batch 2 requests were active"
    a.cancel()
    assert done["c"].wait(60) and errors["c"] is None, errors.get("c")
    assert done["a"].is_set() and "CANCELLED" in str(errors["a"]).upper()
    assert not done["b"].is_set(), "the other long request should still be running"
    b.cancel()
    assert done["b"].wait(10) and "CANCELLED" in str(errors["b"]).upper()


def test_grpc_cancel_stops_the_loop(server, grpc):
    done = threading.Event()
    outcome = {}

    def callback(result, error):
        outcome["error"] = error
        done.set()

    before = _unet_executions(grpc, server)[0]
    ctx = grpc.async_infer("stable_diffusion",
                           infer_inputs(grpcclient, PROMPT, steps=1000, scheduler="euler"),
                           callback=callback)
    deadline = time.monotonic() + 60
    while _unet_executions(grpc, server)[0] - before < 3:  # the loop is running
        assert time.monotonic() < deadline, "the request never reached its UNet steps"
        time.sleep(0.05)
    ctx.cancel()
    assert done.wait(10)
    assert outcome["error"] is not None and "CANCELLED" in str(outcome["error"]).upper()
    time.sleep(1.0)  # the step in flight when the cancel arrived may still finish
    stopped_at = _unet_executions(grpc, server)[0]
    time.sleep(2.0)
    assert _unet_executions(grpc, server)[0] == stopped_at, "sd_unet ran on after the cancel"
    assert stopped_at - before < 500, "the loop ran to the end"
    # the server and the model stay healthy: the next request is served
    assert grpc.is_server_live() and grpc.is_model_ready("stable_diffusion")
    assert _generate(grpcclient, grpc, steps=2).shape == (64, 64, 3)


@pytest.mark.parametrize("opts, message", [
    (dict(steps=0), "'steps' must be >= 1, got 0"),
    (dict(steps=1001), "'steps' must be <= 1000"),
    (dict(steps=1000, scheduler="ddim"), "scheduler 'ddim' cannot run 1000 steps"),
    (dict(height=60), "'height' must be a multiple of 8, got 60"),
    (dict(width=4096), "'width' must be between 8 and 1024 pixels"),
    (dict(guidance_scale=-0.5), "'guidance_scale' must be >= 0.0"),
    (dict(scheduler="karras"), "'scheduler' must be one of ddim, euler, euler_a, dpm++"),
])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invalid_arguments(server, protocol, opts, message):
    mod, client = _client(server, protocol)
    with pytest.raises(InferenceServerException) as info:
        client.infer("stable_diffusion", infer_inputs(mod, PROMPT, **opts))
    assert message in info.value.message()
    status = str(info.value.status())
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), status


def test_missing_prompt_is_refused(server):
    client = httpclient.InferenceServerClient(server.http_url)
    steps = httpclient.InferInput("steps", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[3]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="prompt"):
        client.infer("stable_diffusion", [steps])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_txt2img_client_writes_the_png(server, reference, tmp_path, protocol):
    from PIL import Image

    out: Path = tmp_path / "out.png"
    url = server.grpc_url if protocol == "grpc" else server.http_url
    cmd = [sys.executable, str(PROJECT_ROOT / "clients" / "txt2img.py"), PROMPT, "-o", str(out),
           "--protocol", protocol, "--url", url, "--steps", "3", "--seed", "9",
           "--scheduler", "dpm++", "--negative", NEGATIVE]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = np.asarray(Image.open(out).convert("RGB"))
    want = reference(PROMPT, negative_prompt=NEGATIVE, steps=3, seed=9, scheduler="dpm++")
    assert np.array_equal(got, want)
    bad = subprocess.run(cmd[:-6] + ["--steps", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'steps' must be >= 1" in bad.stderr


def test_server_stays_healthy(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live() and client.is_server_ready()
    for m in MODELS:
        assert client.is_model_ready(m), m
    log = server.log()
    assert "uip/sd/" not in log and "uip/triton/models/sd" not in log  # no tracebacks of ours
