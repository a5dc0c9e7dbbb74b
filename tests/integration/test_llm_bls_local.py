"""`llm_bls` with `engine_transport: local`: the engine in llm_bls's own stub, no llm_engine.

A repository rendered from specs/llm_bls.yaml alone, with the torch runtime and the engine's
parameters on llm_bls: 16 concurrent streams (half joining mid-flight) equal transformers
`generate` token for token, a stop string ends a stream, a cancelled stream frees its KV
blocks (the engine's metrics, under llm_bls's name, back to zero), and the server stays
healthy."""

from __future__ import annotations

import copy
import time

import pytest
from conftest import start_test_server
from support.llm_reference import greedy_texts, with_late_joiners
from support.server_metrics import assert_engine_at_rest

from uip.clients import metrics
from uip.clients.llm import GrpcStream, generate_grpc
from uip.core.paths import DEFAULT_SPECS
from uip.repo.render import build_repository
from uip.spec.schema import DeploymentSpec, load_spec

N = 16
PROMPTS = [f"local {i}: {w}" for i, w in enumerate(
    ["hello", "café", "東京", "server", "batch", "token", "model", "stream"] * 2)]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm-bls-local")
    data = copy.deepcopy(load_spec(DEFAULT_SPECS / "llm_bls.yaml").model_dump())
    (bls,) = data["models"]
    bls["runtime"] = "torch"
    bls["parameters"].update(engine_transport="local", num_blocks=128, page_size=16,
                             max_batch_tokens=256)
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
