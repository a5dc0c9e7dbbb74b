"""The torch runtime (transformers continuous batching) in-process: the Engine contract, and
greedy output equal to `model.generate` token for token."""

from __future__ import annotations

import pytest
import torch
from engine_contract import (
    EngineContract,
    N,
    collect,
    run,
    run_concurrently,
    tokens_of,
)

from uip import artifacts
from uip.core.inputs import InvalidInput
from uip.core.paths import artifacts_root
from uip.core.settings import ModelSettings
from uip.llm.engine import GenerationRequest, SamplingParams
from uip.llm.sampling import effective as effective_sampling
from uip.llm.torch_runtime import TorchEngine, TorchEngineConfig

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
CONFIG = TorchEngineConfig(num_blocks=48, page_size=32, max_batch_tokens=128)


@pytest.fixture(scope="module")
def model_dir():
    artifacts.ensure(["llm-tiny"])
    return artifacts_root() / "llm-tiny"


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def reference(model_dir):
    """A separate model object for `generate` (the engine's runs in its own thread)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def generate(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


class TestTorchEngine(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model_dir):
        eng = TorchEngine(model_dir, CONFIG)
        yield eng
        eng.shutdown()

    def test_greedy_equals_generate(self, reference, prompts, greedy):
        for i, p in enumerate(prompts):
            assert greedy[i] == generate(reference, p, N), f"prompt {i}: {TEXTS[i]!r}"

    def test_32_concurrent_requests_equal_generate(self, engine, prompts, greedy):
        reqs = [GenerationRequest(input_ids=prompts[i % 8], max_new_tokens=N,
                                  streaming=i % 3 == 0) for i in range(32)]
        for i, results in enumerate(run_concurrently(engine, reqs)):
            assert tokens_of(results) == greedy[i % 8], f"request {i}"

    def test_seeded_sampling_does_not_depend_on_the_batch(self, engine, prompts):
        sp = SamplingParams(temperature=0.8, top_p=0.9, seed=99)
        alone = tokens_of(run(engine, prompts[2], sampling=sp))
        reqs = [GenerationRequest(input_ids=prompts[2], max_new_tokens=N, sampling=sp)]
        reqs += [GenerationRequest(input_ids=p, max_new_tokens=N) for p in prompts[3:8]]
        reqs += [GenerationRequest(input_ids=prompts[0], max_new_tokens=N,
                                   sampling=SamplingParams(temperature=1.0, seed=5))]
        assert tokens_of(run_concurrently(engine, reqs)[0]) == alone

    def test_long_prompt_is_prefilled_in_chunks(self, engine, reference, prompts):
        prompt = (prompts[1] * 40)[:300]  # > max_batch_tokens (128): chunked prefill
        assert tokens_of(collect(engine, engine.enqueue(GenerationRequest(
            input_ids=prompt, max_new_tokens=8)))) == generate(reference, prompt, 8)

    def test_kv_cache_comes_from_the_config(self, engine, prompts):
        assert engine.stats().kv_blocks_total == 48
        # 48 blocks x 32 tokens = 1536 < max_context 2048: refused up front, not stuck
        with pytest.raises(InvalidInput, match="KV cache"):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=1600))
        with pytest.raises(InvalidInput, match="exceeds the context of"):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=2048))


def test_no_kv_cache_size_is_refused(model_dir):
    with pytest.raises(ValueError, match="num_blocks"):
        TorchEngine(model_dir, TorchEngineConfig(num_blocks=None))
    with pytest.raises(ValueError, match="GPU"):
        TorchEngine(model_dir, TorchEngineConfig(num_blocks=None, kv_cache_memory_fraction=0.5))


def test_config_from_spec_parameters():
    config = {
        "name": "llm_engine",
        "max_batch_size": 64,
        "parameters": {k: {"string_value": v} for k, v in {
            "runtime": "torch", "artifact": "llm-tiny", "limits.max_context": "1024",
            "limits.max_tokens": "256", "num_blocks": "100", "page_size": "16",
            "max_batch_tokens": "64", "prefix_caching": "false"}.items()},
    }
    cfg = TorchEngineConfig.from_settings(ModelSettings.from_config(config))
    assert (cfg.num_blocks, cfg.page_size, cfg.max_batch_tokens) == (100, 16, 64)
    assert cfg.max_context == 1024 and cfg.prefix_caching is False and cfg.device == "cpu"


@pytest.mark.parametrize("sp, greedy", [
    (SamplingParams(), True),
    (SamplingParams(temperature=0.0), True),
    (SamplingParams(top_k=1, temperature=0.9), True),
    (SamplingParams(seed=3), True),
    (SamplingParams(temperature=0.7), False),
    (SamplingParams(top_p=0.9), False),
    (SamplingParams(top_k=40), False),
])
def test_effective_sampling(sp, greedy):
    assert (effective_sampling(sp) is None) == greedy


@pytest.mark.parametrize("sp", [SamplingParams(temperature=-0.1), SamplingParams(top_p=0.0),
                                SamplingParams(top_p=1.5), SamplingParams(top_k=-2)])
def test_effective_sampling_refuses_bad_values(sp):
    with pytest.raises(InvalidInput):
        effective_sampling(sp)
