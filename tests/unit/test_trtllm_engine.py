"""The tensorrt_llm runtime's pure parts: executor config, request/response translation, lazy
import, worker ranks (no TensorRT-LLM needed: `support.fake_trtllm` stands in for its module)."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from support import fake_trtllm as F

from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm.engine import GenerationRequest, SamplingParams
from uip.triton.runtimes import engine_class
from uip.trtllm.engine_dir import EngineDir
from uip.trtllm.runtime import (
    TRTLLM_CONTAINER,
    ExecutorSettings,
    TrtllmEngine,
    TrtllmUnavailable,
    executor_config,
    finish_reason,
    import_executor_module,
    parse_eos,
    to_executor_request,
    to_result,
    with_default_eos,
)

T = F.module()


@pytest.fixture
def engine_dir(tmp_path):
    return F.write_engine_dir(tmp_path / "engine", vocab_size=64, max_input_len=16,
                              max_seq_len=32)


# --------------------------------------------------------------------------- settings


def test_settings_from_parameters_parse_and_round_trip():
    s = ExecutorSettings.from_parameters({
        "batch_scheduler_policy": "MAX_UTILIZATION", "kv_cache_free_gpu_mem_fraction": "0.5",
        "enable_kv_cache_reuse": "true", "max_tokens_in_paged_kv_cache": "4096",
        "gpu_device_ids": "0,1", "num_blocks": "64",  # torch runtime's: ignored
    })
    assert s.batch_scheduler_policy == "max_utilization"
    assert s.kv_cache_free_gpu_mem_fraction == 0.5
    assert s.enable_kv_cache_reuse is True
    assert s.max_tokens_in_paged_kv_cache == 4096
    assert s.gpu_device_ids == (0, 1)
    assert ExecutorSettings.from_parameters(
        {k: str(v) for k, v in s.to_parameters().items()}) == s


@pytest.mark.parametrize("params, word", [
    ({"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy"),
    ({"kv_cache_free_gpu_mem_fraction": "1.5"}, "kv_cache_free_gpu_mem_fraction"),
    ({"kv_cache_free_gpu_mem_fraction": "lots"}, "kv_cache_free_gpu_mem_fraction"),
    ({"enable_kv_cache_reuse": "maybe"}, "enable_kv_cache_reuse"),
    ({"batching_type": "v2"}, "batching_type"),
    ({"max_queue_size": "0"}, "max_queue_size"),
])
def test_bad_settings_name_the_parameter(params, word):
    with pytest.raises(ValueError, match=word):
        ExecutorSettings.from_parameters(params)


# --------------------------------------------------------------------------- executor config


def test_executor_config_is_inflight_with_paged_kv_fraction_and_policy():
    cfg = executor_config(ExecutorSettings(kv_cache_free_gpu_mem_fraction=0.85,
                                           batch_scheduler_policy="max_utilization",
                                           enable_kv_cache_reuse=True), T)
    assert isinstance(cfg, T.ExecutorConfig)
    assert cfg.batching_type is T.BatchingType.INFLIGHT
    assert cfg.max_beam_width == 1
    assert cfg.kv_cache_config.free_gpu_memory_fraction == 0.85
    assert cfg.kv_cache_config.enable_block_reuse is True
    assert cfg.kv_cache_config.max_tokens is None
    assert cfg.scheduler_config.capacity_scheduler_policy is \
        T.CapacitySchedulerPolicy.MAX_UTILIZATION
    assert cfg.parallel_config is None  # default: MPI LEADER over the mpirun ranks
    assert cfg.enable_chunked_context is False


def test_executor_config_defaults_and_options():
    cfg = executor_config(ExecutorSettings(max_tokens_in_paged_kv_cache=8192, max_queue_size=100,
                                           enable_chunked_context=True), T)
    assert cfg.scheduler_config.capacity_scheduler_policy is \
        T.CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    assert cfg.kv_cache_config.free_gpu_memory_fraction == 0.9
    assert cfg.kv_cache_config.max_tokens == 8192
    assert cfg.max_queue_size == 100 and cfg.enable_chunked_context is True


def test_executor_config_parallel_modes():
    cfg = executor_config(ExecutorSettings(gpu_device_ids=(2, 3)), T)
    assert cfg.parallel_config.communication_mode is T.CommunicationMode.LEADER
    assert cfg.parallel_config.device_ids == [2, 3]
    cfg = executor_config(ExecutorSettings(communication_mode="orchestrator",
                                           executor_worker_path="/opt/w"), T)
    pc = cfg.parallel_config
    assert pc.communication_mode is T.CommunicationMode.ORCHESTRATOR
    assert pc.orchestrator_config.is_orchestrator is True
    assert pc.orchestrator_config.worker_executable_path == "/opt/w"


def test_fake_bindings_reject_unknown_keywords_like_pybind():
    with pytest.raises(TypeError):
        T.KvCacheConfig(free_gpu_mem_fraction=0.9)  # the real name is free_gpu_memory_fraction
    with pytest.raises(TypeError):
        T.Request([1, 2], 4, streaming="yes")


# --------------------------------------------------------------------------- requests


INFO = EngineDir(path=None, tp_size=1, pp_size=1, vocab_size=100, max_input_len=8,
                  max_seq_len=20)


def test_greedy_request_translation():
    req = to_executor_request(GenerationRequest([5, 6, 7], 4, streaming=True), T, INFO)
    assert req.input_token_ids == [5, 6, 7] and req.max_tokens == 4 and req.streaming is True
    assert req.sampling_config.top_k == 1 and req.sampling_config.beam_width == 1
    assert req.sampling_config.temperature is None and req.sampling_config.top_p is None
    assert req.output_config.exclude_input_from_output is True
    assert req.end_id is None and req.stop_words is None and req.bad_words is None


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=0.0, top_p=0.5, seed=3), SamplingParams(top_k=1, top_p=0.9),
])
def test_temperature_zero_and_top_k_one_translate_to_greedy(sampling):
    sc = to_executor_request(GenerationRequest([1], 2, sampling=sampling), T, INFO).sampling_config
    assert sc.top_k == 1 and sc.top_p is None and sc.temperature is None


def test_sampling_request_translation():
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=2**40)
    req = to_executor_request(GenerationRequest(
        [1, 2], 5, sampling=sp, end_id=2, stop_words=[[3, 4], [9]], bad_words=[[8]],
        streaming=False), T, INFO)
    sc = req.sampling_config
    assert (sc.temperature, sc.top_p, sc.top_k, sc.seed) == (0.7, 0.9, 40, 2**40)
    assert req.end_id == 2 and req.pad_id == 2  # pad defaults to end, as TensorRT-LLM's models
    assert req.stop_words == [[3, 4], [9]] and req.bad_words == [[8]]
    assert req.streaming is False


@pytest.mark.parametrize("req, word", [
    (GenerationRequest([], 4), "empty"),
    (GenerationRequest([1], 0), "max_new_tokens"),
    (GenerationRequest([100], 4), "vocabulary"),
    (GenerationRequest([1] * 9, 4), "max_input_len"),
    (GenerationRequest([1] * 8, 13), "context of 20 tokens"),
    (GenerationRequest([1], 4, stop_words=[[500]]), "stop_words"),
    (GenerationRequest([1], 4, end_id=100), "end_id"),
    (GenerationRequest([1], 4, sampling=SamplingParams(top_p=1.5)), "top_p"),
])
def test_invalid_requests_are_invalid_input(req, word):
    with pytest.raises(InvalidInput, match=word):
        to_executor_request(req, T, INFO)


def test_default_eos_from_parameters():
    assert parse_eos("128001, 128009") == (128001, 128009)
    assert parse_eos("") == ()
    with pytest.raises(ValueError, match="eos_token_ids"):
        parse_eos("eos")
    r = with_default_eos(GenerationRequest([1], 4, stop_words=[[5, 6]]), (7, 9))
    assert r.end_id == 7 and r.stop_words == [[5, 6], [9]]
    explicit = GenerationRequest([1], 4, end_id=3)
    assert with_default_eos(explicit, (7, 9)) is explicit


# --------------------------------------------------------------------------- responses


def _final(reason, tokens=(1, 2)):
    res = T.Result()
    res.is_final = True
    res.output_token_ids = [list(tokens)]
    res.finish_reasons = [reason]
    return T.Response(7, res)


@pytest.mark.parametrize("reason, want", [
    (F.FinishReason.END_ID, "stop"), (F.FinishReason.STOP_WORDS, "stop"),
    (F.FinishReason.LENGTH, "length"), (F.FinishReason.CANCELLED, "cancelled"),
])
def test_final_response_translation(reason, want):
    r = to_result(_final(reason))
    assert (r.request_id, r.tokens, r.is_final, r.finish_reason) == (7, [1, 2], True, want)


def test_streaming_and_error_response_translation():
    res = T.Result()
    res.output_token_ids = [[42]]
    r = to_result(T.Response(3, res))
    assert (r.tokens, r.is_final, r.finish_reason) == ([42], False, None)
    r = to_result(T.Response(3, error_msg="Prompt length (9) exceeds maximum input length (8)"))
    assert r.is_final and r.finish_reason == "error" and "exceeds" in r.error


def test_finish_reason_by_enum_name_or_text():
    """pybind enums print as 'FinishReason.LENGTH', nanobind ones have .name."""
    text_only = type("E", (), {"__str__": lambda s: "FinishReason.LENGTH"})()
    assert finish_reason(text_only) == "length"
    assert finish_reason(SimpleNamespace(name="CANCELLED")) == "cancelled"
    assert finish_reason(SimpleNamespace(name="NOT_FINISHED")) is None
    assert finish_reason(None) is None


# --------------------------------------------------------------------------- engine


def _drain(engine, rid, timeout=10.0):
    out, deadline = [], time.monotonic() + timeout
    while not (out and out[-1].is_final):
        assert time.monotonic() < deadline
        out += engine.await_responses(rid, timeout=0.5)
    return out


def test_end_id_is_the_last_token_as_with_torch(engine_dir):
    """TensorRT-LLM leaves the end id out of its output; the adapter adds it back, so both
    runtimes return the same tokens (and num_output_tokens)."""
    eng = TrtllmEngine(engine_dir, executor_module=F.module())
    try:
        ref = _drain(eng, eng.enqueue(GenerationRequest([1, 2, 3], 8, streaming=False)))[0].tokens
        for streaming in (False, True):
            out = _drain(eng, eng.enqueue(GenerationRequest([1, 2, 3], 8, end_id=ref[2],
                                                            streaming=streaming)))
            got = [t for r in out for t in r.tokens]
            assert got == ref[:ref.index(ref[2]) + 1]
            assert out[-1].finish_reason == "stop"
        # the model's EOS (eos_token_ids) applies when the request has no end_id
        eng.eos_token_ids = (ref[3],)
        out = _drain(eng, eng.enqueue(GenerationRequest([1, 2, 3], 8, streaming=False)))
        assert out[0].tokens == ref[:ref.index(ref[3]) + 1]
    finally:
        eng.shutdown()


def test_error_response_is_a_final_error_result(engine_dir):
    eng = TrtllmEngine(engine_dir, executor_module=F.module())
    eng.info = EngineDir(engine_dir, 1, 1, vocab_size=64)  # skip the adapter's own limit check
    try:
        out = _drain(eng, eng.enqueue(GenerationRequest(list(range(20)), 4)))
        assert len(out) == 1 and out[0].finish_reason == "error"
        assert "maximum input length" in out[0].error
    finally:
        eng.shutdown()


def test_worker_rank_waits_in_shutdown_and_serves_nothing(engine_dir):
    eng = TrtllmEngine(engine_dir, executor_module=F.module(is_leader=False))
    assert eng.is_leader is False
    with pytest.raises(RuntimeError, match="rank 0"):
        eng.enqueue(GenerationRequest([1], 2))
    assert eng.stats().active_requests == 0
    eng.shutdown()  # already shut down: no-op


def test_engine_checks_rank_files(tmp_path):
    d = F.write_engine_dir(tmp_path / "e", tp_size=2)
    (d / "rank1.engine").unlink()
    with pytest.raises(ValueError, match="rank1.engine"):
        TrtllmEngine(d, executor_module=T)


def test_runtime_factory_maps_tensorrt_llm_and_from_settings(engine_dir):
    assert engine_class("tensorrt_llm") is TrtllmEngine
    settings = ModelSettings(name="llm_engine", runtime="tensorrt_llm", artifact=engine_dir,
                             parameters={"batch_scheduler_policy": "max_utilization",
                                         "eos_token_ids": "5"})
    eng = TrtllmEngine.from_settings(settings, executor_module=F.module())
    try:
        assert eng.settings.batch_scheduler_policy == "max_utilization"
        assert eng.eos_token_ids == (5,)
        cfg = eng._executor.config
        assert cfg.scheduler_config.capacity_scheduler_policy is \
            F.CapacitySchedulerPolicy.MAX_UTILIZATION
    finally:
        eng.shutdown()


# --------------------------------------------------------------------------- lazy import


def test_module_imports_without_tensorrt_llm():
    code = ("import sys, uip.trtllm.runtime, uip.triton.runtimes, uip.trtllm.build; "
            "print('tensorrt_llm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_tensorrt_llm_load_fails_naming_the_container(engine_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # as if not installed
    with pytest.raises(TrtllmUnavailable) as e:
        import_executor_module()
    assert TRTLLM_CONTAINER in str(e.value) and "torch" in str(e.value)
    with pytest.raises(TrtllmUnavailable):
        TrtllmEngine(engine_dir)
