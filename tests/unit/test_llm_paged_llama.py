"""The paged engine's model runner against transformers' own models on tiny random
checkpoints built here (fixed seed): RoPE scaling ('llama3', 'linear'), Qwen2 q/k/v biases,
tied embeddings; logits of a prefill past the original context, and greedy decoding through
PagedEngine equal to `generate`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_contract import run, tokens_of

from uip.llm.llama import LlamaRunner, rope_inv_freq
from uip.llm.paged_attention import build_meta
from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
LINEAR = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}

CASES = {
    "llama3-rope": ("llama", dict(rope_parameters=LLAMA3)),
    "linear-rope-tied": ("llama", dict(rope_parameters=LINEAR, tie_word_embeddings=True)),
    "qwen2-bias": ("qwen2", dict(rope_parameters={"rope_type": "default",
                                                 "rope_theta": 1000000.0})),
    "mistral": ("mistral", dict(sliding_window=None)),
}


def build(kind: str, extra: dict, path):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                             "mistral": (MistralConfig, MistralForCausalLM)}[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SHAPE, **extra)).eval()
    with torch.no_grad():  # larger random biases than the init's zeros, so they matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    kind, extra = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    return build(kind, extra, path), path


def test_inv_freq_matches_transformers_rotary_embedding(checkpoint):
    model, path = checkpoint
    runner = LlamaRunner(path, dtype="float32")
    ours, scale = rope_inv_freq(runner.config, runner.shape.head_dim)
    theirs = model.model.rotary_emb.inv_freq
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=0)
    assert scale == model.model.rotary_emb.attention_scaling


def test_prefill_logits_match_transformers(checkpoint):
    model, path = checkpoint
    runner = LlamaRunner(path, dtype="float32")
    n, bs = 100, 16  # past original_max_position_embeddings (32) of the llama3 case
    ids = torch.randint(3, 256, (n,), generator=torch.Generator().manual_seed(1))
    cache = runner.allocate_cache(num_blocks=8, block_size=bs)
    table = [5, 2, 7, 0, 1, 3, 4]  # any blocks, in any order
    slots = [table[p // bs] * bs + p % bs for p in range(n)]
    meta = build_meta(slots, [], [], [(0, n, n, table)], bs, torch.device("cpu"))
    with torch.no_grad():
        ours = runner.forward(ids, torch.arange(n), meta, cache, torch.arange(n))
        theirs = model(ids[None]).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_greedy_decoding_matches_generate(checkpoint):
    model, path = checkpoint
    eng = PagedEngine(path, PagedEngineConfig(num_blocks=32, page_size=16, dtype="float32"))
    try:
        gen = torch.Generator().manual_seed(2)
        for n in (3, 40):  # the 40-token prompt decodes past position 32
            prompt = torch.randint(3, 256, (n,), generator=gen).tolist()
            with torch.no_grad():
                ref = model.generate(torch.tensor([prompt]), max_new_tokens=12,
                                     do_sample=False, eos_token_id=None)[0, n:].tolist()
            unused = next(t for t in range(255, 2, -1) if t not in ref)  # no early stop
            got = tokens_of(run(eng, prompt, n=12, end_id=unused))
            assert got == ref[:len(got)] and len(got) == 12
    finally:
        eng.shutdown()


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "rope type"),
    ({"max_position_embeddings": 64}, "max_position_embeddings"),
])
def test_unsupported_checkpoints_are_refused(llm_tiny_dir, tmp_path, change, message):
    for f in ("config.json", "model.safetensors"):
        shutil.copy(llm_tiny_dir / f, tmp_path / f)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        LlamaRunner(tmp_path, max_context=128)
