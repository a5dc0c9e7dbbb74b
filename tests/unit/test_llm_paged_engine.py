"""PagedEngine (our own paged KV cache engine) in-process on the tiny model, CPU fp32: the
Engine contract, and greedy output equal to transformers `generate` token for token alone,
in flight, with prompts joining mid-flight, with prefix caching on and off, and under
preemption."""

from __future__ import annotations

import time

import pytest
import torch
from engine_contract import (
    EngineContract,
    N,
    collect,
    run,
    run_concurrently,
    tokens_of,
    wait_idle,
)

from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm.engine import GenerationRequest, SamplingParams
from uip.llm.paged_runtime import EngineOverloaded, PagedEngine, PagedEngineConfig

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog",
    "café 東京 😀 naïve",
    "def main():\n    return 0",
    "Tell me a story about a river and a mountain",
    "x y z",
    "server latency and throughput",
    "<|user|>\nHi there</s>",
]
CONFIG = PagedEngineConfig(num_blocks=96, page_size=16, max_batch_tokens=128,
                           torch_threads=2)


@pytest.fixture(scope="module")
def model_dir(llm_tiny_dir):
    return llm_tiny_dir


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


_generated: dict[tuple, list[int]] = {}


def generate(model, prompt: list[int], n: int) -> list[int]:
    key = (tuple(prompt), n)
    if key not in _generated:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        _generated[key] = out[0, len(prompt):].tolist()
    return _generated[key]


def make(model_dir, **kw) -> PagedEngine:
    fields = {**CONFIG.__dict__, **kw}
    return PagedEngine(model_dir, PagedEngineConfig(**fields))


class TestPagedEngine(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model_dir):
        eng = make(model_dir)
        yield eng
        eng.shutdown()

    def test_greedy_one_at_a_time_equals_generate(self, reference, prompts, greedy):
        for i, p in enumerate(prompts):
            assert greedy[i] == generate(reference, p, N), f"prompt {i}: {TEXTS[i]!r}"

    def test_8_in_flight_equal_generate(self, engine, reference, prompts):
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in prompts]
        for i, results in enumerate(run_concurrently(engine, reqs)):
            assert tokens_of(results) == generate(reference, prompts[i], N), f"prompt {i}"

    def test_32_in_flight_joining_mid_flight_equal_generate(self, engine, reference, prompts):
        base = engine.stats().tokens_generated
        first = [engine.enqueue(GenerationRequest(input_ids=prompts[i % 8], max_new_tokens=N,
                                                  streaming=i % 3 == 0)) for i in range(16)]
        while engine.stats().tokens_generated < base + 16 * 3:  # the first ones decode
            time.sleep(0.005)
        later = [engine.enqueue(GenerationRequest(input_ids=prompts[i % 8], max_new_tokens=N))
                 for i in range(16, 32)]
        for i, rid in enumerate(first + later):
            assert tokens_of(collect(engine, rid)) == generate(reference, prompts[i % 8], N)
        wait_idle(engine)

    def test_seeded_sampling_does_not_depend_on_the_batch(self, engine, prompts):
        sp = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=99)
        alone = tokens_of(run(engine, prompts[2], sampling=sp))
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in prompts[3:8]]
        reqs.insert(2, GenerationRequest(input_ids=prompts[2], max_new_tokens=N, sampling=sp))
        reqs += [GenerationRequest(input_ids=prompts[0], max_new_tokens=N,
                                   sampling=SamplingParams(temperature=1.0, seed=5))]
        assert tokens_of(run_concurrently(engine, reqs)[2]) == alone

    def test_long_prompt_is_prefilled_in_chunks(self, engine, reference, prompts):
        prompt = (prompts[1] * 40)[:300]  # > max_batch_tokens (128): chunked prefill
        assert tokens_of(collect(engine, engine.enqueue(GenerationRequest(
            input_ids=prompt, max_new_tokens=8)))) == generate(reference, prompt, 8)

    def test_cancel_frees_blocks(self, engine, prompts):
        rids = [engine.enqueue(GenerationRequest(input_ids=p, max_new_tokens=500))
                for p in prompts]
        while engine.stats().kv_blocks_used < 8:
            time.sleep(0.005)
        for rid in rids:
            engine.cancel(rid)
        assert all(collect(engine, r)[-1].finish_reason == "cancelled" for r in rids)
        assert wait_idle(engine, timeout=2.0).kv_blocks_used == 0

    def test_logits_mask_hook(self, engine, prompts):
        allowed = torch.zeros(engine.vocab_size, dtype=torch.bool)
        allowed[[11, 12, 13]] = True
        seen: list[int] = []

        def mask(generated):
            seen.append(len(generated))
            return allowed

        rid = engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=5),
                             logits_mask=mask)
        assert set(tokens_of(collect(engine, rid))) <= {11, 12, 13}
        assert seen == [0, 1, 2, 3, 4]

        def broken(generated):
            raise ValueError("grammar lost")

        bad = engine.enqueue(GenerationRequest(input_ids=prompts[1], max_new_tokens=5),
                             logits_mask=broken)
        last = collect(engine, bad)[-1]
        assert last.finish_reason == "error" and "grammar lost" in last.error
        wait_idle(engine)
        assert tokens_of(run(engine, prompts[0], n=2))  # the engine serves on

    def test_kv_cache_comes_from_the_config(self, engine, prompts):
        assert engine.stats().kv_blocks_total == 96
        # 96 blocks x 16 tokens = 1536 < max_context 2048: refused up front, not stuck
        with pytest.raises(InvalidInput, match="KV cache"):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=1600))
        with pytest.raises(InvalidInput, match="context length"):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=2048))


def shared_prefix_prompts(prompts: list[list[int]]) -> list[list[int]]:
    prefix = (prompts[4] + prompts[1]) * 2  # ~60 tokens: several full 16-token blocks
    return [prefix + p for p in prompts]


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_shared_prefixes_equal_generate(model_dir, reference, prompts, prefix_caching):
    eng = make(model_dir, prefix_caching=prefix_caching)
    try:
        shared = shared_prefix_prompts(prompts)
        assert tokens_of(run(eng, shared[0])) == generate(reference, shared[0], N)
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in shared]
        for i, results in enumerate(run_concurrently(eng, reqs)):
            assert tokens_of(results) == generate(reference, shared[i], N), f"prompt {i}"
        s = wait_idle(eng)
        assert (s.prefix_cache_hits >= 8 * 3) == prefix_caching
        assert (s.prefix_cache_hits == 0) == (not prefix_caching)
    finally:
        eng.shutdown()


def test_whole_prompt_in_the_cache_recomputes_its_last_token_only(model_dir, reference,
                                                                  prompts):
    """A prompt of whole blocks found again: its last token runs alone (one row, not a
    block), its K/V goes to the scratch slot, and the shared cached blocks are not written."""
    whole = (prompts[4] * 8)[:32]  # two blocks of 16
    eng = make(model_dir)
    try:
        assert tokens_of(run(eng, whole)) == generate(reference, whole, N)
        hits = eng.stats().prefix_cache_hits
        cached = list(eng.blocks._cached.values())
        before = [(k[cached].clone(), v[cached].clone()) for k, v in eng.cache]
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in [whole] * 3]
        for r in run_concurrently(eng, reqs):
            assert tokens_of(r) == generate(reference, whole, N)
        assert eng.stats().prefix_cache_hits == hits + 3 * 2
        for (k, v), (k0, v0) in zip(eng.cache, before, strict=True):
            assert torch.equal(k[cached], k0) and torch.equal(v[cached], v0)
        wait_idle(eng)
    finally:
        eng.shutdown()


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption_keeps_outputs_exact(model_dir, reference, prompts, prefix_caching):
    # 14 blocks of 8 tokens = 112 slots; 8 requests need ~ 8 x 4 blocks: preemption
    eng = make(model_dir, num_blocks=14, page_size=8, max_batch_tokens=64,
               prefix_caching=prefix_caching)
    try:
        sp = SamplingParams(temperature=0.9, top_k=40, seed=7)
        alone = tokens_of(run(eng, prompts[3], sampling=sp))
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in prompts]
        reqs.append(GenerationRequest(input_ids=prompts[3], max_new_tokens=N, sampling=sp))
        results = run_concurrently(eng, reqs)
        for i in range(8):
            assert tokens_of(results[i]) == generate(reference, prompts[i], N), f"prompt {i}"
        assert tokens_of(results[8]) == alone  # a preempted sampled request resumes its draws
        s = wait_idle(eng)
        assert s.preemptions > 0 and s.kv_blocks_used == 0
    finally:
        eng.shutdown()


def test_admission_limit_gives_a_clear_error(model_dir, prompts):
    eng = make(model_dir, max_requests_per_batch=1, max_waiting_requests=2)
    try:
        rids = []
        with pytest.raises(EngineOverloaded, match="max_waiting_requests=2"):
            for p in prompts[:4]:
                rids.append(eng.enqueue(GenerationRequest(input_ids=p, max_new_tokens=400)))
        assert 2 <= len(rids) <= 3
        for rid in rids:
            eng.cancel(rid)
        wait_idle(eng)
        assert tokens_of(run(eng, prompts[0], n=2))  # serves again
    finally:
        eng.shutdown()


def test_a_failing_step_fails_every_request_and_hangs_none(model_dir, prompts):
    eng = make(model_dir)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("device lost")

        eng.runner.forward = broken
        with eng._lock:  # all queued before the engine thread takes any
            rids = [eng.enqueue(GenerationRequest(input_ids=p, max_new_tokens=4))
                    for p in prompts]
        finals = [collect(eng, r, timeout=5.0)[-1] for r in rids]
        assert all(f.finish_reason == "error" and "device lost" in f.error for f in finals)
        with pytest.raises(RuntimeError, match="device lost"):
            eng.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=4))
    finally:
        eng.shutdown()


def test_no_kv_cache_size_is_refused(model_dir):
    with pytest.raises(ValueError, match="num_blocks"):
        PagedEngine(model_dir, PagedEngineConfig(num_blocks=None))
    with pytest.raises(ValueError, match="GPU"):
        PagedEngine(model_dir, PagedEngineConfig(num_blocks=None, kv_cache_memory_fraction=0.5))


def test_config_from_spec_parameters():
    config = {
        "name": "llm_engine",
        "max_batch_size": 64,
        "parameters": {k: {"string_value": v} for k, v in {
            "runtime": "torch", "artifact": "llm-tiny", "limits.max_context": "1024",
            "limits.max_tokens": "256", "num_blocks": "100", "page_size": "16",
            "max_batch_tokens": "64", "prefix_caching": "false",
            "max_requests_per_batch": "8", "max_waiting_requests": "32"}.items()},
    }
    cfg = PagedEngineConfig.from_settings(ModelSettings.from_config(config))
    assert (cfg.num_blocks, cfg.page_size, cfg.max_batch_tokens) == (100, 16, 64)
    assert (cfg.max_requests_per_batch, cfg.max_waiting_requests) == (8, 32)
    assert cfg.max_context == 1024 and cfg.prefix_caching is False and cfg.device == "cpu"


def test_equal_length_prompts_share_one_prefill_attention(model_dir, reference, prompts):
    """Prompts of one length admitted together, with or without one cached prefix: one
    batched SDPA per layer and run (`paged_attention._runs`), outputs still equal
    `generate`."""
    from uip.llm.paged_attention import Prefill, _runs

    two = torch.tensor([0, 1])
    chunks = [Prefill(0, 20, 20, None), Prefill(20, 20, 20, None), Prefill(40, 7, 7, None),
              Prefill(47, 20, 40, two), Prefill(67, 20, 40, two), Prefill(87, 20, 20, None),
              Prefill(107, 20, 36, two)]
    assert [(r[0].start, len(r)) for r in _runs(chunks)] == [(0, 2), (40, 1), (47, 2),
                                                               (87, 1), (107, 1)]
    same = [(prompts[i] * 20)[:20] for i in range(4)]
    eng = make(model_dir, prefix_caching=False)
    try:
        results = run_concurrently(eng, [GenerationRequest(input_ids=p, max_new_tokens=N)
                                         for p in same])
        for i, r in enumerate(results):
            assert tokens_of(r) == generate(reference, same[i], N), f"prompt {i}"
    finally:
        eng.shutdown()
    # one cached block of 16, then distinct tails of 16: one run over the gathered prefix
    head = (prompts[1] * 16)[:16]
    tails = [head + (prompts[i] * 16)[:16] for i in range(2, 6)]
    eng = make(model_dir)
    try:
        assert tokens_of(run(eng, head + head)) == generate(reference, head + head, N)
        hits = eng.stats().prefix_cache_hits
        results = run_concurrently(eng, [GenerationRequest(input_ids=p, max_new_tokens=N)
                                         for p in tails])
        for i, r in enumerate(results):
            assert tokens_of(r) == generate(reference, tails[i], N), f"tail {i}"
        assert eng.stats().prefix_cache_hits >= hits + len(tails)
    finally:
        eng.shutdown()
