"""`llm` (ensemble) and `llm_bls` (BLS) through the real tritonserver vs transformers.

Greedy text equals `tokenizer.decode(model.generate(...) ids, skip_special_tokens=True)` for
HTTP generate, SSE and gRPC streams with 8 requests in flight; stop words, max_tokens, seeds,
refused inputs, and a gRPC cancel of an llm_bls stream freeing its engine slot.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import expected_stubs, live_stubs
from support.server_metrics import metric

from uip.clients.llm import (
    GenerateError,
    GrpcStream,
    generate,
    generate_grpc,
    generate_http,
    generate_sse,
)
from uip.core.paths import artifacts_root

MODELS = ["llm", "llm_bls"]
PROMPTS = ["Hello world", "café 東京 😀 naïve", "def main():\n    return", "Привет мир, 你好",
           "the cache is", "👋🏽 emoji ∑ ∞ →", "model server request", ""]
N = 24


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifacts_root() / "llm-tiny")


@pytest.fixture(scope="module")
def reference(tokenizer):
    """prompt -> greedy generated ids (transformers `generate`, EOS included when hit)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(artifacts_root() / "llm-tiny").eval()
    out = {}
    with torch.no_grad():
        for p in PROMPTS:
            ids = tokenizer(p)["input_ids"]
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False)
            out[p] = gen[0, len(ids):].tolist()
    return out


def url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol", ["http", "sse", "grpc"])
def test_greedy_equals_transformers_8_in_flight(server, tokenizer, reference, model, protocol):
    def one(prompt):
        return generate(protocol, url(server, protocol), model, prompt, max_tokens=N,
                        return_num_output_tokens=True)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(one, PROMPTS))
    for prompt, gen in zip(PROMPTS, results, strict=True):
        ids = reference[prompt]
        assert gen.text == tokenizer.decode(ids, skip_special_tokens=True), prompt
        assert gen.num_output_tokens == len(ids), prompt
        want = "stop" if ids[-1] == tokenizer.eos_token_id else "length"
        assert gen.finish_reason == want, prompt
        if protocol == "http":
            assert gen.responses == 1
        else:  # streamed: deltas (merged when the client falls behind a fast engine)
            assert gen.responses >= min(len(ids), 2), prompt


def test_deltas_are_whole_characters(server, tokenizer, reference):
    """Where the whole text is valid UTF-8, no delta carries a replacement character."""
    clean = [p for p in PROMPTS if "\ufffd" not in tokenizer.decode(reference[p])]
    assert clean
    for model in MODELS:
        for p in clean:
            gen = generate_grpc(server.grpc_url, model, p, max_tokens=N)
            assert all("\ufffd" not in d for d in gen.deltas), (model, p, gen.deltas)


def test_llm_bls_counts_and_echo(server, tokenizer, reference):
    prompt = PROMPTS[1]
    for protocol in ("http", "grpc"):
        gen = generate(protocol, url(server, protocol), "llm_bls", prompt, max_tokens=N,
                       exclude_input_in_output=False, return_num_input_tokens=True,
                       return_num_output_tokens=True)
        assert gen.text == prompt + tokenizer.decode(reference[prompt], skip_special_tokens=True)
        assert gen.num_input_tokens == len(tokenizer(prompt)["input_ids"])
        assert gen.num_output_tokens == len(reference[prompt])


def test_max_tokens_gives_length(server, tokenizer, reference):
    prompt = "Hello world"
    assert tokenizer.eos_token_id not in reference[prompt][:3]
    for model in MODELS:
        gen = generate_http(server.http_url, model, prompt, max_tokens=3,
                            return_num_output_tokens=True)
        assert gen.finish_reason == "length" and gen.num_output_tokens == 3
        assert gen.text == tokenizer.decode(reference[prompt][:3], skip_special_tokens=True)


def test_llm_bls_stop_string_spanning_tokens(server, tokenizer, reference):
    prompt = "model server request"
    text = tokenizer.decode(reference[prompt], skip_special_tokens=True)
    stop = text[6:10]  # a few characters in the middle, across token boundaries
    want = text[:text.find(stop)]
    for protocol in ("http", "sse", "grpc"):
        gen = generate(protocol, url(server, protocol), "llm_bls", prompt, max_tokens=N,
                       stop_words=["never-there", stop])
        assert gen.text == want and gen.finish_reason == "stop", protocol


def test_llm_stop_words_as_tokens(server, tokenizer, reference):
    """The ensemble stops on token sequences, TensorRT-LLM style (the stop word is kept)."""
    prompt = "Hello world"
    ids = reference[prompt]
    for k in range(3, len(ids) - 2):
        word = tokenizer.decode(ids[k:k + 2])
        if tokenizer.encode(word, add_special_tokens=False) == ids[k:k + 2]:
            break
    else:
        pytest.skip("no two-token window re-encodes to itself")
    end = next(i for i in range(2, len(ids) + 1) if ids[i - 2:i] == ids[k:k + 2])
    for protocol in ("http", "grpc"):
        gen = generate(protocol, url(server, protocol), "llm", prompt, max_tokens=N,
                       stop_words=[word])
        assert gen.finish_reason == "stop", protocol
        assert gen.text == tokenizer.decode(ids[:end], skip_special_tokens=True), protocol


def test_seeds_are_reproducible(server):
    prompt, kw = "the cache is", {"max_tokens": 16, "temperature": 1.0, "top_k": 50}
    runs = {}
    for model in MODELS:
        for seed in (7, 7, 8):
            gen = generate_http(server.http_url, model, prompt, seed=seed, **kw)
            runs.setdefault((model, seed), []).append(gen.text)
    for model in MODELS:
        assert runs[(model, 7)][0] == runs[(model, 7)][1]
        assert runs[(model, 7)][0] != runs[(model, 8)][0]
    assert runs[("llm", 7)][0] == runs[("llm_bls", 7)][0]  # same engine, same sampling


def test_anonymous_streams_stream_deltas(server, tokenizer, reference):
    """No request id (perf_analyzer, many OpenAI-style clients): both still stream deltas, and
    two anonymous streams at once do not mix their detokenizer state."""
    prompts = PROMPTS[1], PROMPTS[3]
    for model in MODELS:
        with ThreadPoolExecutor(2) as pool:
            gens = list(pool.map(lambda p, m=model: generate_sse(
                server.http_url, m, p, request_id="", max_tokens=N), prompts))
        for prompt, gen in zip(prompts, gens, strict=True):
            assert gen.responses > 1, f"{model} answered a stream in one response"
            assert gen.text == tokenizer.decode(reference[prompt], skip_special_tokens=True)


BAD = [
    ({"max_tokens": 0}, ">= 1"),
    ({"max_tokens": 5000}, "max_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
]


@pytest.mark.parametrize("model", MODELS)
def test_bad_inputs_are_invalid_arg_and_server_stays_healthy(server, model):
    long_prompt = "word " * 2100  # > 2048 tokens with max_tokens: over the context
    cases = BAD + [({"text": long_prompt, "max_tokens": 8}, "context")]
    if model == "llm":
        cases += [({"exclude_input_in_output": False}, "llm_bls"),
                  ({"return_num_input_tokens": True}, "llm_bls")]
    for kw, match in cases:
        kw = dict(kw)
        prompt = kw.pop("text", "Hello")
        for protocol in ("http", "grpc"):
            with pytest.raises(GenerateError) as e:
                generate(protocol, url(server, protocol), model, prompt, **kw)
            if protocol == "http":
                assert e.value.invalid_argument, (protocol, kw, e.value)
            else:
                # Triton 2.51's gRPC stream responses carry only error_message, no status
                # code (ModelStreamInferResponse): the client sees the message alone.
                assert e.value.status is None, (protocol, kw, e.value)
            assert match in str(e.value), (protocol, kw, e.value)
    assert server.ready()
    assert generate_http(server.http_url, model, "Hello", max_tokens=2).finish_reason


def test_grpc_cancel_of_llm_bls_frees_the_engine_slot(server):
    tokens_before = metric(server, "uip_llm_tokens_generated_total")
    stream = GrpcStream(server.grpc_url, "llm_bls", "Hello world", max_tokens=1000).start()
    got = 0
    for _ in stream.responses(timeout=60):
        got += 1
        if got == 3:
            break
    t0 = time.monotonic()  # the gauge is refreshed every 0.1 s
    while metric(server, "uip_llm_active_sequences") < 1:
        assert time.monotonic() - t0 < 2, "the running request is not in the active gauge"
        time.sleep(0.02)
    stream.cancel()
    t0 = time.monotonic()
    while metric(server, "uip_llm_active_sequences") > 0:
        assert time.monotonic() - t0 < 5, "the engine still runs the cancelled request"
        time.sleep(0.05)
    generated = metric(server, "uip_llm_tokens_generated_total") - tokens_before
    assert generated < 500, f"{generated} tokens: the cancel did not stop the engine early"
    gen = generate_grpc(server.grpc_url, "llm_bls", "Hello world", max_tokens=4)
    assert gen.finish_reason in ("length", "stop") and gen.responses >= 1


def test_many_streams_with_cancels_keep_every_stub_alive(server, tokenizer, reference):
    """Regression: Triton 2.51's stub builds decoupled BLS responses off the GIL and prunes
    unrequested outputs off the GIL; both crashed stubs within seconds of this load."""

    def one(i: int) -> None:
        model = MODELS[i % 2]
        if i % 3:
            # an ensemble's cancel does not reach llm_engine in 2.51: keep those short
            stream = GrpcStream(server.grpc_url, model, PROMPTS[i % len(PROMPTS)],
                                max_tokens=300 if model == "llm_bls" else 40).start()
            for n, _ in enumerate(stream.responses(timeout=60)):
                if n == i % 5:
                    break
            stream.cancel()
        else:
            generate_grpc(server.grpc_url, model, "Bonjour", max_tokens=1 + i % 12)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(96)))
    assert live_stubs(server) == expected_stubs(server.repository), "a Python stub died under load"
    t0 = time.monotonic()  # let the cancelled ensemble streams' engine requests finish
    while metric(server, "uip_llm_active_sequences") > 0:
        assert time.monotonic() - t0 < 120, "engine requests still running 2 min after the load"
        time.sleep(0.2)
    for model in MODELS:
        gen = generate_grpc(server.grpc_url, model, PROMPTS[0], max_tokens=6)
        assert gen.text == tokenizer.decode(reference[PROMPTS[0]][:6], skip_special_tokens=True)


def _llm_bls_stub(server):
    import psutil

    for child in psutil.Process(server.proc.pid).children():
        cmd = " ".join(child.cmdline())
        if "triton_python_backend_stub" in cmd and "/llm_bls/" in cmd:
            return child
    raise AssertionError("no llm_bls stub found")


def test_llm_bls_threads_stay_bounded_with_32_streams(server, tokenizer, reference):
    """One driver thread and one shared gRPC stream to llm_engine serve every llm_bls request:
    the stub's thread count does not grow from 1 stream to 32 (gRPC's own pool is sized by
    the CPU count, so the bound is "no thread per request", not an absolute number)."""
    stub = _llm_bls_stub(server)

    def in_flight(n: int) -> tuple[list, int]:
        streams = [GrpcStream(server.grpc_url, "llm_bls", PROMPTS[i % len(PROMPTS)],
                              max_tokens=1000).start() for i in range(n)]
        iters = [s.responses(timeout=60) for s in streams]
        for it in iters:  # every stream is in flight (its first delta came)
            next(it)
        return streams, stub.num_threads()

    one, baseline = in_flight(1)
    streams = one
    try:
        more, threads = in_flight(31)
        streams = one + more
        assert threads <= baseline + 2, f"the llm_bls stub went from {baseline} threads with 1 " \
            f"stream to {threads} with 32"
        for s in streams:  # and each still streams (a stream may also have ended: EOS)
            next(s.responses(timeout=60), None)
    finally:
        for s in streams:
            s.cancel()
    t0 = time.monotonic()
    while metric(server, "uip_llm_active_sequences") > 0:
        assert time.monotonic() - t0 < 30, "the cancelled llm_bls streams still run"
        time.sleep(0.1)
    gen = generate_grpc(server.grpc_url, "llm_bls", PROMPTS[0], max_tokens=6)
    assert gen.text == tokenizer.decode(reference[PROMPTS[0]][:6], skip_special_tokens=True)
