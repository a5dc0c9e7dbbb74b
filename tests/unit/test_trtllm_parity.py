"""Both runtimes, one model: `TrtllmEngine` over the fake executor driven by the tiny Llama
passes the engine contract and returns, token for token, what `model.generate` (and so the
torch runtime) returns, with the model's EOS as its default end id."""

from __future__ import annotations

import pytest
import torch
from engine_contract import EngineContract, N
from support import fake_trtllm

from uip.trtllm.runtime import TrtllmEngine

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "café 東京 😀 naïve",
         "def main():\n    return 0", "Tell me a story about a river and a mountain", "x y z",
         "server latency and throughput", "<|user|>\nHi there</s>"]


@pytest.fixture(scope="module")
def model_dir(llm_tiny_dir):
    return llm_tiny_dir


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok(t)["input_ids"] for t in TEXTS]


class TestTrtllmEngineOnTinyLlama(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model, tmp_path_factory):
        vocab = int(model.config.vocab_size)
        eos = model.generation_config.eos_token_id
        engine_dir = fake_trtllm.write_engine_dir(
            tmp_path_factory.mktemp("tiny") / "engine", vocab_size=vocab, max_batch_size=8,
            max_input_len=1024, max_seq_len=2048)
        eng = TrtllmEngine(engine_dir, eos_token_ids=(eos,) if isinstance(eos, int) else eos,
                           executor_module=fake_trtllm.module(fake_trtllm.HfModel(model),
                                                              step_delay=0.001))
        yield eng
        eng.shutdown()

    def test_greedy_equals_generate(self, model, prompts, greedy):
        for i, p in enumerate(prompts):
            with torch.no_grad():
                ref = model.generate(torch.tensor([p]), max_new_tokens=N, do_sample=False)
            assert greedy[i] == ref[0, len(p):].tolist(), f"prompt {i}: {TEXTS[i]!r}"
