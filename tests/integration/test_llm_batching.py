"""In-flight batching through the real server: 32 `llm` streams in flight, half of them
joining mid-flight, each equal to transformers `generate`; the llm_engine stub serves 64
streams with a bounded number of threads; the engine's metrics return to zero afterwards."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from support.llm_reference import greedy_texts, with_late_joiners
from support.server_metrics import assert_engine_at_rest
from test_llm import metric

from uip.clients.llm import GrpcStream, generate_grpc

N = 20
PROMPTS = [f"request {i}: {w}" for i, w in enumerate(
    ["hello", "café", "東京", "server", "batch", "token", "model", "stream"] * 4)]


@pytest.fixture(scope="module")
def greedy():
    return greedy_texts(PROMPTS, N)


def engine_stub(server) -> psutil.Process:
    for child in psutil.Process(server.proc.pid).children():
        if f"{Path('llm_engine') / '1' / 'model.py'}" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no llm_engine stub")


def test_32_in_flight_with_late_joiners_equal_generate(server, greedy):
    def generate(prompt, on_delta):
        return generate_grpc(server.grpc_url, "llm", prompt, on_delta=on_delta, max_tokens=N,
                             request_id=f"batch-{prompt}").text

    texts = with_late_joiners(PROMPTS, generate)
    for prompt, text in zip(PROMPTS, texts, strict=True):
        assert text == greedy[prompt], prompt


def test_64_streams_bounded_threads_and_metrics_back_to_zero(server):
    stub = engine_stub(server)
    # through llm_bls: a gRPC cancel of the `llm` ensemble does not reach llm_engine in 2.51
    streams = [GrpcStream(server.grpc_url, "llm_bls", f"t {i}", request_id=f"threads-{i}",
                          max_tokens=200, stream=True) for i in range(64)]
    try:
        for s in streams:
            s.start()
        time.sleep(1.0)  # all 64 are in the engine now
        threads = stub.num_threads()
        assert threads < 16, f"llm_engine's stub runs {threads} threads for 64 streams"
    finally:
        for s in streams:
            s.cancel()
            s.close()
    assert_engine_at_rest(lambda name: metric(server, name))
