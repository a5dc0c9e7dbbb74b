"""The tensorrt_llm runtime's LoRA mapping against the stand-in executor: `lora_name` ->
LoraConfig(task_id, weights, config) in TensorRT-LLM's layout, weights sent once and then the
task id alone, a "not found in cache" error answered by sending the request again with the
weights (same caller id), unknown adapters INVALID_ARG."""

from __future__ import annotations

import pytest
import torch
from engine_contract import collect
from support import fake_trtllm as F

from uip.core.inputs import InvalidInput
from uip.llm.engine import GenerationRequest
from uip.llm.lora import AdapterDir
from uip.trtllm.lora import MODULE_IDS, TrtllmLora, lora_tensors
from uip.trtllm.runtime import TrtllmEngine


@pytest.fixture
def engine(tmp_path, llm_tiny_lora_dir):
    folder = F.write_engine_dir(tmp_path / "engine", vocab_size=64, max_input_len=16,
                                max_seq_len=32)
    eng = TrtllmEngine(folder, executor_module=F.module(),
                       lora=TrtllmLora(llm_tiny_lora_dir, max_rank=8, dtype="float32"))
    yield eng
    eng.shutdown()


def request(name: str | None) -> GenerationRequest:
    return GenerationRequest(input_ids=[1, 2, 3], max_new_tokens=4, lora_name=name,
                             streaming=False)


def test_tensors_follow_tensorrt_llm_layout(llm_tiny_lora_dir):
    adapter = AdapterDir(llm_tiny_lora_dir, 8).read("beta")
    weights, config = lora_tensors(adapter, "float32")
    assert config.shape == (2 * 7, 3) and weights.shape[0] == 14  # 2 layers x 7 modules
    for row, (module, layer, rank) in zip(weights, config.tolist(), strict=True):
        proj = next(p for p, m in MODULE_IDS.items() if m == module)
        a, b = adapter.weights[(layer, proj)]
        assert rank == 8
        n = a.numel() + b.numel()
        assert torch.equal(row[:n], torch.cat([a.reshape(-1), b.reshape(-1)]))
        assert not row[n:].any()


def test_weights_sent_once_then_task_id(engine):
    for _ in range(2):
        results = collect(engine, engine.enqueue(request("alpha")))
        assert results[-1].is_final and results[-1].error is None
    first, second = (r.lora_config for r in engine._executor.requests)
    assert first.task_id == second.task_id
    assert first.weights is not None and second.weights is None
    collect(engine, engine.enqueue(request("beta")))
    assert engine._executor.requests[-1].lora_config.task_id != first.task_id
    assert engine.adapters()["available"] == ["alpha", "beta"]


def test_evicted_adapter_is_resent(engine):
    collect(engine, engine.enqueue(request("alpha")))
    engine._executor.lora_cache.clear()  # the executor's PEFT cache evicted it
    rid = engine.enqueue(request("alpha"))
    results = collect(engine, rid)
    assert results[-1].request_id == rid and results[-1].error is None
    assert len(results[-1].tokens) == 4
    sent = [r.lora_config for r in engine._executor.requests]
    assert [c.weights is not None for c in sent] == [True, False, True]


def test_unknown_adapter_and_no_lora_dir(engine, tmp_path):
    with pytest.raises(InvalidInput, match="'gamma'"):
        engine.enqueue(request("gamma"))
    plain = TrtllmEngine(F.write_engine_dir(tmp_path / "e2"), executor_module=F.module())
    try:
        with pytest.raises(InvalidInput, match="serves no LoRA adapters"):
            plain.enqueue(request("alpha"))
    finally:
        plain.shutdown()
