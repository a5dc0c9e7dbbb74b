"""`llm_bls` with `engine_transport: local`: the engine in llm_bls's own stub, no llm_engine.

A repository rendered from specs/llm_bls.yaml alone, with the torch runtime and the engine's
parameters on llm_bls: 16 concurrent streams (half joining mid-flight) equal transformers
`generate` token for token, a stop string ends a stream, a cancelled stream frees its KV
blocks (the engine's metrics, under llm_bls's name, back to zero), and the server stays
healthy. Its lora_dir is a temporary folder: `uip lora --model llm_bls` lists, loads and
unloads an adapter there (the admin key checked, errors INVALID_ARG), as llm_engine does."""

from __future__ import annotations

import copy
import json
import shutil
import time

import httpx
import pytest
import typer
from conftest import start_test_server
from support.llm_reference import greedy_texts, with_late_joiners
from support.server_metrics import assert_engine_at_rest
from typer.testing import CliRunner

from uip.artifacts import llm_tiny_lora
from uip.clients import lora, metrics
from uip.clients.llm import GenerateError, GrpcStream, generate_grpc
from uip.clients.lora import LoraControlError, lora_control
from uip.core.paths import DEFAULT_SPECS, artifacts_root
from uip.repo.render import build_repository
from uip.spec.schema import DeploymentSpec, load_spec

N = 16
PROMPTS = [f"local {i}: {w}" for i, w in enumerate(
    ["hello", "café", "東京", "server", "batch", "token", "model", "stream"] * 2)]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("llm-bls-local-adapters")


@pytest.fixture(scope="module")
def local(tmp_path_factory, lora_dir):
    folder = tmp_path_factory.mktemp("llm-bls-local")
    data = copy.deepcopy(load_spec(DEFAULT_SPECS / "llm_bls.yaml").model_dump())
    (bls,) = data["models"]
    bls["runtime"] = "torch"
    bls["parameters"].update(engine_transport="local", num_blocks=128, page_size=16,
                             max_batch_tokens=256, lora_dir=str(lora_dir), lora_max_rank=16)
    build_repository([DeploymentSpec.model_validate(data)], folder / "repo")
    assert sorted(p.name for p in (folder / "repo").iterdir()) == ["llm_bls"]
    srv = start_test_server(folder / "repo", folder)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def greedy():
    return greedy_texts(PROMPTS, N)


def engine_metric(srv, name: str) -> float:
    found = metrics.select(metrics.fetch(srv.metrics_url, timeout=5), name, model="llm_bls")
    assert found, f"{name} is not exported for llm_bls"
    return sum(s.value for s in found)


def test_concurrent_streams_with_late_joiners_equal_generate(local, greedy):
    def generate(prompt, on_delta):
        return generate_grpc(local.grpc_url, "llm_bls", prompt, on_delta=on_delta,
                             max_tokens=N).text

    texts = with_late_joiners(PROMPTS, generate)
    for prompt, text in zip(PROMPTS, texts, strict=True):
        assert text == greedy[prompt], prompt
    deadline = time.monotonic() + 10  # the engine's counters follow it every 0.1 s
    while engine_metric(local, "uip_llm_tokens_generated_total") < len(PROMPTS):
        assert time.monotonic() < deadline, "the engine's token counter did not follow"
        time.sleep(0.2)


def test_stop_string_ends_the_stream(local, greedy):
    prompt = PROMPTS[0]
    full = greedy[prompt]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    got = generate_grpc(local.grpc_url, "llm_bls", prompt, max_tokens=N, stop_words=[stop])
    assert got.finish_reason == "stop"
    assert got.text == full[:full.index(stop)]


def test_cancelled_streams_free_their_blocks(local):
    streams = [GrpcStream(local.grpc_url, "llm_bls", f"cancel {i}", max_tokens=500, stream=True)
               for i in range(8)]
    try:
        for s in streams:
            s.start()
        deadline = time.monotonic() + 60
        while engine_metric(local, "uip_llm_active_sequences") < 8:
            assert time.monotonic() < deadline, "the 8 streams never all ran"
            time.sleep(0.1)
        assert engine_metric(local, "uip_llm_kv_blocks_used") > 0
    finally:
        for s in streams:
            s.cancel()
            s.close()
    assert_engine_at_rest(lambda name: engine_metric(local, name))
    assert generate_grpc(local.grpc_url, "llm_bls", PROMPTS[1], max_tokens=4).finish_reason


def test_lora_control_through_llm_bls(local, lora_dir, tmp_path_factory):
    """`uip lora list|load|unload --model llm_bls`: the same key check, JSON answer and
    errors as llm_engine's; the loaded adapter serves llm_bls's lora_name."""
    built = llm_tiny_lora.build(tmp_path_factory.mktemp("llm-bls-local-built"),
                                artifacts_root() / "llm-tiny")
    shutil.copytree({f.name: f for f in built}["alpha"], lora_dir / "alpha")
    url, key = local.grpc_url, local.admin_key

    def control(op, name=None, key=key):
        return lora_control(url, op, name, key=key, model="llm_bls")

    with pytest.raises(LoraControlError, match="admin key is missing or wrong"):
        control("list", key="wrong")
    with pytest.raises(LoraControlError, match="admin key"):
        control("load", "alpha", key=None)
    status = control("list")
    assert status["enabled"] and status["available"] == ["alpha"] and status["loaded"] == []
    status = control("load", "alpha")
    assert [a["name"] for a in status["loaded"]] == ["alpha"]
    base = generate_grpc(url, "llm_bls", PROMPTS[0], max_tokens=8).text
    assert generate_grpc(url, "llm_bls", PROMPTS[0], max_tokens=8, lora_name="alpha").text != base
    assert control("unload", "alpha")["loaded"] == []
    for op, name, message in [("unload", "alpha", "'alpha' is not loaded"),
                              ("load", "nope", "unknown LoRA adapter 'nope'")]:
        with pytest.raises(LoraControlError, match=message):
            control(op, name)
    for body, message in [({"op": "list", "key": "wrong"}, "admin key"),
                          ({"op": "load", "name": "nope", "key": key}, "nope"),
                          ({"op": "drop", "key": key}, "op one of")]:
        # over HTTP generate, the error's code shows: INVALID_ARG is 400
        r = httpx.post(f"http://{local.http_url}/v2/models/llm_bls/generate", timeout=30,
                       json={"text_input": "", "lora_control": json.dumps(body)})
        assert r.status_code == 400 and message in r.json()["error"], r.text
    with pytest.raises(GenerateError, match="nope"):
        generate_grpc(url, "llm_bls", PROMPTS[0], max_tokens=4, lora_name="nope")

    app = typer.Typer()
    lora.register(app)
    run = CliRunner().invoke(app, ["lora", "list", "--url", url, "--admin-key", key,
                                   "--model", "llm_bls"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "alpha  (on disk)" in run.output
    run = CliRunner().invoke(app, ["lora", "list", "--url", url, "--admin-key", "wrong",
                                   "--model", "llm_bls"], catch_exceptions=False)
    assert run.exit_code == 1 and "admin key" in run.output
