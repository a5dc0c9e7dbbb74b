"""LoRA in PagedEngine (in-process, tiny model, CPU fp32): greedy output with an adapter equals
the PEFT-merged model's transformers `generate` token for token; a batch mixing adapters and
the base model gives each request its own answer; an adapter copied into the directory later
is served on its next request; unknown adapters and ranks above the cap are INVALID_ARG; the
device slots are evicted least recently used."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_contract import run, run_concurrently, tokens_of, wait_idle

from uip.core.inputs import InvalidInput
from uip.llm import lora
from uip.llm.engine import GenerationRequest
from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

N = 12
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "café 東京 😀 naïve",
           "def main():\n    return 0"]


@pytest.fixture(scope="module")
def prompts(llm_tiny_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_tiny_dir)
    return [tok(t)["input_ids"] for t in PROMPTS]


@pytest.fixture(scope="module")
def lora_dir(llm_tiny_lora_dir, tmp_path_factory):
    """A private copy: tests add and remove adapters in it."""
    dest = tmp_path_factory.mktemp("adapters")
    for name in ("alpha", "beta"):
        shutil.copytree(llm_tiny_lora_dir / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def engine(llm_tiny_dir, lora_dir):
    eng = PagedEngine(llm_tiny_dir, PagedEngineConfig(
        num_blocks=64, page_size=16, max_batch_tokens=128, torch_threads=2,
        lora_dir=str(lora_dir), lora_max_rank=8, lora_max_adapters=2))
    yield eng
    eng.shutdown()


_refs: dict = {}


def reference(model_dir, adapters_dir, adapter: str | None, prompt: list[int]) -> list[int]:
    """transformers `generate` on the base model, or on base + adapter merged by PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if adapter not in _refs:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapters_dir / adapter).merge_and_unload()
        _refs[adapter] = model.eval()
    with torch.no_grad():
        out = _refs[adapter].generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False)
    return out[0, len(prompt):].tolist()


def generated(engine, prompt, adapter=None) -> list[int]:
    return tokens_of(run(engine, prompt, N, lora_name=adapter))


@pytest.mark.parametrize("adapter", ["alpha", "beta"])
def test_greedy_equals_peft_merged_generate(engine, llm_tiny_dir, lora_dir, prompts, adapter):
    base = [reference(llm_tiny_dir, lora_dir, None, p) for p in prompts[:2]]
    for prompt, base_tokens in zip(prompts[:2], base, strict=True):
        want = reference(llm_tiny_dir, lora_dir, adapter, prompt)
        assert want != base_tokens, "the adapter should change the output"
        assert generated(engine, prompt, adapter) == want


# 256: decode steps take the dense form (as on the GPU), prefill the grouped; 0: all grouped
@pytest.mark.parametrize("dense_max_rows", [256, 0])
def test_mixed_batch_gives_each_its_own_answer(engine, prompts, monkeypatch, dense_max_rows):
    monkeypatch.setitem(lora.DENSE_MAX_ROWS, "cpu", dense_max_rows)
    plan = [(p, a) for p in prompts for a in (None, "alpha", "beta")]
    alone = [generated(engine, p, a) for p, a in plan]
    together = run_concurrently(engine, [
        GenerationRequest(input_ids=p, max_new_tokens=N, lora_name=a) for p, a in plan])
    assert [tokens_of(r) for r in together] == alone
    assert len({tuple(t) for t in alone}) > len(prompts)  # adapters answer differently
    wait_idle(engine)
    assert all(s["requests"] == 0 for s in engine.adapters()["loaded"])


def test_prefix_cache_keeps_adapters_apart(engine, prompts):
    long_prompt = prompts[1] * 3  # several full blocks: cached after the first request
    base = generated(engine, long_prompt)
    with_alpha = generated(engine, long_prompt, "alpha")
    assert generated(engine, long_prompt) == base
    assert generated(engine, long_prompt, "alpha") == with_alpha != base


def test_adapter_added_at_runtime_is_served(engine, llm_tiny_dir, lora_dir, prompts):
    with pytest.raises(InvalidInput, match="'gamma'"):
        generated(engine, prompts[0], "gamma")
    shutil.copytree(lora_dir / "beta", lora_dir / "gamma")
    try:
        assert "gamma" in engine.adapters()["available"]
        assert generated(engine, prompts[0], "gamma") == generated(engine, prompts[0], "beta")
    finally:
        engine.unload_adapter("gamma")
        shutil.rmtree(lora_dir / "gamma")


def test_lru_eviction_and_unload(engine, lora_dir, prompts):
    for name in ("alpha", "beta"):
        generated(engine, prompts[0], name)
    shutil.copytree(lora_dir / "alpha", lora_dir / "delta")
    try:
        generated(engine, prompts[0], "delta")  # 2 slots: evicts alpha, the least recent
        assert {s["name"] for s in engine.adapters()["loaded"]} == {"beta", "delta"}
        assert engine.unload_adapter("delta")
        assert not engine.unload_adapter("delta")
        engine.load_adapter("alpha")
        assert {s["name"] for s in engine.adapters()["loaded"]} == {"alpha", "beta"}
    finally:
        shutil.rmtree(lora_dir / "delta")


def test_rank_above_cap_and_bad_names_are_invalid(engine, lora_dir, prompts):
    big = lora_dir / "big"
    shutil.copytree(lora_dir / "beta", big)
    try:
        cfg = json.loads((big / "adapter_config.json").read_text())
        (big / "adapter_config.json").write_text(json.dumps({**cfg, "r": 32}))
        with pytest.raises(InvalidInput, match="rank 32.*lora_max_rank of 8"):
            generated(engine, prompts[0], "big")
    finally:
        shutil.rmtree(big)
    with pytest.raises(InvalidInput, match="not a valid adapter name"):
        generated(engine, prompts[0], "../alpha")


def test_base_engine_refuses_adapters(llm_tiny_dir, prompts):
    eng = PagedEngine(llm_tiny_dir, PagedEngineConfig(num_blocks=8, page_size=16))
    try:
        with pytest.raises(InvalidInput, match="serves no LoRA adapters"):
            generated(eng, prompts[0], "alpha")
    finally:
        eng.shutdown()


def test_lora_benchmark_runs_on_the_tiny_model(llm_tiny_dir, tmp_path):
    """`uip.bench.llm_lora` (the GPU command with --model-dir, here CPU and tiny): adapters
    built by PEFT from the model's config, both kinds of round, the forward microbenchmark
    and its check that the adapters change the output."""
    from uip.bench import llm_lora

    out = llm_lora.main(["--model-dir", str(llm_tiny_dir), "--streams", "4", "--adapters", "2",
                         "--rank", "4", "--rounds", "1", "--max-new-tokens", "3",
                         "--torch-threads", "1", "--forward-iters", "2", "--prefill-rows", "64",
                         "--json", str(tmp_path / "out.json")])
    assert out["base_tok_per_cpu_s"] > 0 and out["lora_tok_per_cpu_s"] > 0
    assert out["forward"]["lora_changes_argmax"] > 0
    assert out["forward"]["eager_unfused_max_abs_diff_eager"] < 1e-3
    assert out["prefill"]["rows"] == 64 and out["prefill"]["dense_max_abs_diff_grouped"] < 1e-3
    assert json.loads((tmp_path / "out.json").read_text())["ratio_tok_s"] == out["ratio_tok_s"]
