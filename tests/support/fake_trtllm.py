"""A pure-Python stand-in for `tensorrt_llm.bindings.executor` (TensorRT-LLM 1.2.x), for tests.

TensorRT-LLM cannot be installed on the machines here, so `TrtllmEngine` is pointed at this
module instead (`TrtllmEngine(dir, executor_module=fake_trtllm.module(model))`) and runs the
same engine contract tests as the torch runtime, in-process, on CPU. What it mirrors:

- the constructors' keyword names and defaults of the bindings (`cpp/tensorrt_llm/pybind/
  executor/*.cpp` of TensorRT-LLM 1.2): an unknown keyword or a wrong type is a TypeError, as
  with pybind, so a typo in the adapter fails here rather than on the GPU machine;
- the executor's observable behaviour: ids from `enqueue_request`, in-flight batching (requests
  join between steps up to max_batch_size), one response per step when streaming and one final
  response otherwise, only new tokens with `exclude_input_from_output`, the end id not in the
  output, stop words in it, finish reasons END_ID / STOP_WORDS / LENGTH / CANCELLED, an error
  response for a prompt over max_input_len, `await_responses` on a finished id raising, iteration
  stats with KV cache blocks, and LEADER-mode worker ranks (`can_enqueue_requests()` False).

It is not TensorRT-LLM: token choice comes from a `TokenModel` (a hash for unit tests, or a
transformers model so its greedy output can be compared with the torch runtime).
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

# ----------------------------------------------------------------------------------- enums


class ModelType(enum.Enum):
    DECODER_ONLY = 0
    ENCODER_ONLY = 1
    ENCODER_DECODER = 2


class BatchingType(enum.Enum):
    STATIC = 0
    INFLIGHT = 1


class CapacitySchedulerPolicy(enum.Enum):
    MAX_UTILIZATION = 0
    GUARANTEED_NO_EVICT = 1
    STATIC_BATCH = 2


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


# --------------------------------------------------------------------------- config classes


def _check(name: str, value: Any, kind: type | tuple[type, ...], optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) and kind in (int, float):
        raise TypeError(f"{name}: incompatible argument {value!r} (bool)")
    if not isinstance(value, kind):
        raise TypeError(f"{name}: incompatible argument {value!r} ({type(value).__name__})")


def _tokens(name: str, value: Any) -> list[int]:
    if not isinstance(value, list | tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise TypeError(f"{name}: expected a list of int token ids, got {value!r}")
    return list(value)


class _Record:
    """Keeps every keyword as an attribute, like the bindings' properties."""

    def _keep(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k != "self":
                setattr(self, k, v)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class KvCacheConfig(_Record):
    def __init__(self, enable_block_reuse=True, max_tokens=None, max_attention_window=None,
                 sink_token_length=None, free_gpu_memory_fraction=None, host_cache_size=None,
                 onboard_blocks=True, cross_kv_cache_fraction=None,
                 secondary_offload_min_priority=None, event_buffer_max_size=0, *,
                 enable_partial_reuse=True, copy_on_partial_reuse=True, use_uvm=False,
                 attention_dp_events_gather_period_ms=5, runtime_defaults=None):
        _check("enable_block_reuse", enable_block_reuse, bool, optional=False)
        _check("max_tokens", max_tokens, int)
        _check("free_gpu_memory_fraction", free_gpu_memory_fraction, float | int)
        self._keep(locals())


class SchedulerConfig(_Record):
    def __init__(self, capacity_scheduler_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 context_chunking_policy=None, dynamic_batch_config=None):
        _check("capacity_scheduler_policy", capacity_scheduler_policy, CapacitySchedulerPolicy,
               optional=False)
        self._keep(locals())


class OrchestratorConfig(_Record):
    def __init__(self, is_orchestrator=True, worker_executable_path="", orch_leader_comm=None,
                 spawn_processes=True):
        _check("is_orchestrator", is_orchestrator, bool, optional=False)
        _check("worker_executable_path", worker_executable_path, str, optional=False)
        self._keep(locals())


class ParallelConfig(_Record):
    def __init__(self, communication_type=CommunicationType.MPI,
                 communication_mode=CommunicationMode.LEADER, device_ids=None,
                 participant_ids=None, orchestrator_config=None, num_nodes=None):
        _check("communication_type", communication_type, CommunicationType, optional=False)
        _check("communication_mode", communication_mode, CommunicationMode, optional=False)
        if device_ids is not None:
            _tokens("device_ids", device_ids)
        _check("orchestrator_config", orchestrator_config, OrchestratorConfig)
        self._keep(locals())


class ExecutorConfig(_Record):
    def __init__(self, max_beam_width=1, scheduler_config=None, kv_cache_config=None,
                 enable_chunked_context=False, normalize_log_probs=True,
                 iter_stats_max_iterations=1000, request_stats_max_iterations=0,
                 batching_type=BatchingType.INFLIGHT, max_batch_size=None, max_num_tokens=None,
                 parallel_config=None, peft_cache_config=None, logits_post_processor_config=None,
                 decoding_config=None, use_gpu_direct_storage=False, gpu_weights_percent=1.0,
                 max_queue_size=None, extended_runtime_perf_knob_config=None, debug_config=None,
                 recv_poll_period_ms=0, max_seq_idle_microseconds=180_000_000,
                 spec_dec_config=None, guided_decoding_config=None,
                 additional_model_outputs=None, cache_transceiver_config=None,
                 gather_generation_logits=False, mm_embedding_offloading=False,
                 enable_trt_overlap=False, fail_fast_on_attention_window_too_large=False):
        _check("max_beam_width", max_beam_width, int, optional=False)
        _check("scheduler_config", scheduler_config, SchedulerConfig)
        _check("kv_cache_config", kv_cache_config, KvCacheConfig)
        _check("enable_chunked_context", enable_chunked_context, bool, optional=False)
        _check("iter_stats_max_iterations", iter_stats_max_iterations, int, optional=False)
        _check("batching_type", batching_type, BatchingType, optional=False)
        _check("max_batch_size", max_batch_size, int)
        _check("parallel_config", parallel_config, ParallelConfig)
        _check("max_queue_size", max_queue_size, int)
        _check("guided_decoding_config", guided_decoding_config, GuidedDecodingConfig)
        scheduler_config = scheduler_config or SchedulerConfig()
        kv_cache_config = kv_cache_config or KvCacheConfig()
        self._keep(locals())


class GuidedDecodingConfig(_Record):
    class GuidedDecodingBackend(enum.Enum):
        XGRAMMAR = 0
        LLGUIDANCE = 1

    def __init__(self, backend, encoded_vocab=None, tokenizer_str=None, stop_token_ids=None):
        _check("backend", backend, GuidedDecodingConfig.GuidedDecodingBackend, optional=False)
        if encoded_vocab is not None and not (isinstance(encoded_vocab, list) and all(
                isinstance(t, str) for t in encoded_vocab)):
            raise TypeError("encoded_vocab: expected a list of str")
        _check("tokenizer_str", tokenizer_str, str)
        if stop_token_ids is not None:
            _tokens("stop_token_ids", stop_token_ids)
        self._keep(locals())


class GuidedDecodingParams(_Record):
    class GuideType(enum.Enum):
        JSON = 0
        JSON_SCHEMA = 1
        REGEX = 2
        EBNF_GRAMMAR = 3
        STRUCTURAL_TAG = 4

    def __init__(self, guide_type, guide=None):
        _check("guide_type", guide_type, GuidedDecodingParams.GuideType, optional=False)
        _check("guide", guide, str)
        self._keep(locals())


class SamplingConfig(_Record):
    def __init__(self, beam_width=1, *, top_k=None, top_p=None, top_p_min=None,
                 top_p_reset_ids=None, top_p_decay=None, seed=None, temperature=None,
                 min_tokens=None, beam_search_diversity_rate=None, repetition_penalty=None,
                 presence_penalty=None, frequency_penalty=None, prompt_ignore_length=None,
                 length_penalty=None, early_stopping=None, no_repeat_ngram_size=None,
                 num_return_sequences=None, min_p=None, beam_width_array=None):
        _check("beam_width", beam_width, int, optional=False)
        _check("top_k", top_k, int)
        _check("top_p", top_p, float)
        _check("seed", seed, int)
        _check("temperature", temperature, float)
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self._keep(locals())


class OutputConfig(_Record):
    def __init__(self, return_log_probs=False, return_context_logits=False,
                 return_generation_logits=False, exclude_input_from_output=False,
                 return_encoder_output=False, return_perf_metrics=False,
                 additional_model_outputs=None):
        _check("exclude_input_from_output", exclude_input_from_output, bool, optional=False)
        self._keep(locals())


class LoraConfig(_Record):
    """`LoraConfig(task_id, weights=None, config=None)`: weights [rows, width] and config
    [rows, 3] torch tensors (module id, layer, rank), both or neither."""

    def __init__(self, task_id, weights=None, config=None):
        import torch

        _check("task_id", task_id, int, optional=False)
        _check("weights", weights, torch.Tensor)
        _check("config", config, torch.Tensor)
        if (weights is None) != (config is None):
            raise ValueError("LoRA weights and config must be given together")
        if config is not None and (config.ndim != 2 or config.shape[1] != 3
                                   or weights.ndim != 2 or weights.shape[0] != config.shape[0]):
            raise ValueError(f"LoRA config must be [rows, 3] and weights [rows, width], got "
                             f"{list(config.shape)} and {list(weights.shape)}")
        self._keep(locals())


class Request(_Record):
    def __init__(self, input_token_ids, max_tokens, *, streaming=False, sampling_config=None,
                 output_config=None, end_id=None, pad_id=None, position_ids=None,
                 bad_words=None, stop_words=None, embedding_bias=None,
                 external_draft_tokens_config=None, prompt_tuning_config=None,
                 multimodal_input=None, multimodal_embedding=None, mrope_config=None,
                 lora_config=None, lookahead_config=None, kv_cache_retention_config=None,
                 logits_post_processor_name=None, logits_post_processor=None,
                 encoder_input_token_ids=None, client_id=None, return_all_generated_tokens=False,
                 priority=0.5, type=None, context_phase_params=None, encoder_input_features=None,
                 encoder_output_length=None, cross_attention_mask=None, num_return_sequences=1,
                 eagle_config=None, skip_cross_attn_blocks=None, guided_decoding_params=None,
                 language_adapter_uid=None, allotted_time_ms=None, cache_salt_id=None):
        input_token_ids = _tokens("input_token_ids", input_token_ids)
        _check("max_tokens", max_tokens, int, optional=False)
        _check("streaming", streaming, bool, optional=False)
        _check("sampling_config", sampling_config, SamplingConfig)
        _check("output_config", output_config, OutputConfig)
        _check("end_id", end_id, int)
        _check("pad_id", pad_id, int)
        _check("lora_config", lora_config, LoraConfig)
        for name, words in (("bad_words", bad_words), ("stop_words", stop_words)):
            if words is not None:
                if not isinstance(words, list):
                    raise TypeError(f"{name}: expected a list of token lists, got {words!r}")
                for w in words:
                    _tokens(name, w)
        _check("guided_decoding_params", guided_decoding_params, GuidedDecodingParams)
        sampling_config = sampling_config or SamplingConfig()
        output_config = output_config or OutputConfig()
        self._keep(locals())


class Result(_Record):
    def __init__(self) -> None:
        self.is_final = False
        self.output_token_ids: list[list[int]] = [[]]
        self.finish_reasons: list[FinishReason] = [FinishReason.NOT_FINISHED]
        self.sequence_index = 0
        self.is_sequence_final = False
        self.cum_log_probs = None
        self.log_probs = None
        self.context_logits = None
        self.generation_logits = None
        self.request_perf_metrics = None


class Response:
    def __init__(self, request_id: int, result: Result | None = None,
                 error_msg: str | None = None, client_id=None):
        self.request_id = request_id
        self.client_id = client_id
        self._result = result
        self._error = error_msg

    def has_error(self) -> bool:
        return self._error is not None

    @property
    def error_msg(self) -> str:
        if self._error is None:
            raise RuntimeError("Cannot get the error message of a response without error")
        return self._error

    @property
    def result(self) -> Result:
        if self._result is None:
            raise RuntimeError(f"Cannot get the result of a response with an error: {self._error}")
        return self._result


class KvCacheStats(_Record):
    def __init__(self, max_num_blocks=0, free_num_blocks=0, used_num_blocks=0,
                 tokens_per_block=0, alloc_total_blocks=0, alloc_new_blocks=0,
                 reused_blocks=0, missed_blocks=0, cache_hit_rate=0.0):
        self._keep(locals())


class IterationStats(_Record):
    def __init__(self) -> None:
        self.timestamp = ""
        self.iter = 0
        self.iter_latency_ms = 0.0
        self.num_active_requests = 0
        self.num_queued_requests = 0
        self.num_completed_requests = 0
        self.max_num_active_requests = 0
        self.gpu_mem_usage = 0
        self.cpu_mem_usage = 0
        self.pinned_mem_usage = 0
        self.kv_cache_stats: KvCacheStats | None = None
        self.inflight_batching_stats = None


# ---------------------------------------------------------------------------- token models


class TokenModel(Protocol):
    vocab_size: int

    def logits(self, tokens: Sequence[int]) -> Sequence[float]:
        """Next-token scores after `tokens` (prompt + generated so far)."""


class HashModel:
    """Deterministic pseudo-logits from the last few tokens: instant, no dependencies."""

    def __init__(self, vocab_size: int = 64, context: int = 3):
        self.vocab_size = vocab_size
        self.context = context

    def logits(self, tokens: Sequence[int]) -> list[float]:
        rng = random.Random(hash(tuple(tokens[-self.context:])) & 0xFFFFFFFF)
        return [rng.gauss(0.0, 2.0) for _ in range(self.vocab_size)]


class HfModel:
    """A transformers causal LM, recomputed over the whole sequence each step (tiny models)."""

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = int(model.config.get_text_config().vocab_size)

    def logits(self, tokens: Sequence[int]) -> list[float]:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([list(tokens)], dtype=torch.long))
        return out.logits[0, -1].float().tolist()


def _choose(scores: list[float], sc: SamplingConfig, rng: random.Random) -> int:
    greedy = (sc.top_k in (None, 0, 1) and sc.top_p is None and sc.temperature is None) or \
        sc.top_k == 1 or sc.temperature == 0
    if greedy:
        return max(range(len(scores)), key=scores.__getitem__)
    t = sc.temperature or 1.0
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    if sc.top_k:
        order = order[: sc.top_k]
    m = scores[order[0]]
    weights = [math.exp((scores[i] - m) / t) for i in order]
    if sc.top_p is not None:
        total, acc, keep = sum(weights), 0.0, 0
        for w in weights:
            keep += 1
            acc += w / total
            if acc >= sc.top_p:
                break
        order, weights = order[:keep], weights[:keep]
    return rng.choices(order, weights=weights)[0]


# -------------------------------------------------------------------------------- executor


class _State:
    def __init__(self, rid: int, req: Request, blocks: int):
        self.id = rid
        self.req = req
        self.generated: list[int] = []
        self.sent = 0
        self.blocks = blocks
        self.cancelled = False
        sc = req.sampling_config
        self.rng = random.Random(sc.seed if sc.seed is not None else rid)


class Executor:
    """In-flight batching over a `TokenModel` in a background thread (see module doc)."""

    model: TokenModel = HashModel()
    is_leader: bool = True
    step_delay: float = 0.0
    tokens_per_block: int = 32
    default_blocks: int = 256

    def __init__(self, model_path, model_type, executor_config):
        _check("model_path", model_path, str | Path, optional=False)
        _check("model_type", model_type, ModelType, optional=False)
        _check("executor_config", executor_config, ExecutorConfig, optional=False)
        if model_type is not ModelType.DECODER_ONLY:
            raise ValueError("the fake executor runs decoder-only models")
        if executor_config.batching_type is not BatchingType.INFLIGHT:
            raise ValueError("the fake executor implements in-flight batching only")
        build = _build_config(Path(model_path))
        self.config = executor_config
        self.max_batch_size = executor_config.max_batch_size or build.get("max_batch_size", 8)
        self.max_input_len = build.get("max_input_len")
        self.max_seq_len = build.get("max_seq_len")
        kv = executor_config.kv_cache_config
        self.total_blocks = (kv.max_tokens // self.tokens_per_block if kv.max_tokens
                             else self.default_blocks)
        self._ids = itertools.count(1)
        self.lora_cache: dict[int, LoraConfig] = {}  # task id -> weights sent (tests evict)
        self.requests: list[Request] = []  # every request enqueued, in order
        self._cond = threading.Condition()
        self._queue: list[_State] = []
        self._active: list[_State] = []
        self._known: dict[int, _State] = {}
        self._ready: dict[int, list[Response]] = {}
        self._stats: list[IterationStats] = []
        self._iter = 0
        self._running = True
        self._thread = None
        if self.is_leader:
            self._thread = threading.Thread(target=self._loop, name="fake-trtllm", daemon=True)
            self._thread.start()

    # -- API of tensorrt_llm.bindings.executor.Executor

    def can_enqueue_requests(self) -> bool:
        return self.is_leader

    def enqueue_request(self, request: Request) -> int:
        _check("request", request, Request, optional=False)
        if not self.is_leader:
            raise RuntimeError("Only the leader can enqueue requests")
        if request.guided_decoding_params is not None and \
                self.config.guided_decoding_config is None:
            raise RuntimeError("Guided decoding is not enabled: set guided_decoding_config")
        with self._cond:
            if not self._running:
                raise RuntimeError("Shutdown called, cannot enqueue request")
            rid = next(self._ids)
            need = math.ceil((len(request.input_token_ids) + request.max_tokens)
                             / self.tokens_per_block)
            st = _State(rid, request, need)
            self._known[rid] = st
            self.requests.append(request)
            q = self.config.max_queue_size
            lora = request.lora_config
            if lora is not None and lora.weights is not None:
                self.lora_cache[lora.task_id] = lora
            if lora is not None and lora.task_id not in self.lora_cache:
                self._push(Response(rid, error_msg=(
                    f"LoRA task {lora.task_id} not found in cache. Please send LoRA weights "
                    "with request")))
            elif self.max_input_len is not None and len(request.input_token_ids) > \
                    self.max_input_len:
                self._push(Response(rid, error_msg=(
                    f"Prompt length ({len(request.input_token_ids)}) exceeds maximum input "
                    f"length ({self.max_input_len}).")))
            elif q is not None and len(self._queue) >= q:
                self._push(Response(rid, error_msg="Maximum queue size reached"))
            else:
                self._queue.append(st)
            self._cond.notify_all()
            return rid

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    def await_responses(self, id=None, timeout=None):  # noqa: A002 - the bindings' name
        _check("timeout", timeout, timedelta)
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        if id is None:  # every request's ready responses (the bindings' overload)
            return self._await_any(deadline)
        if not isinstance(id, int):
            raise NotImplementedError("the fake awaits one request id, or all of them")
        with self._cond:
            if id not in self._known:
                raise RuntimeError(f"ReqId {id} has already been processed and was terminated.")
            while not self._ready.get(id):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                if not self._running:
                    return []
                self._cond.wait(left)
            out = self._ready.pop(id)
            if any(r.has_error() or r.result.is_final for r in out):
                del self._known[id]
            return out

    def _await_any(self, deadline: float | None) -> list:
        with self._cond:
            while not any(self._ready.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not self._running:
                    return []
                self._cond.wait(left)
            out = []
            for rid in list(self._ready):
                got = self._ready.pop(rid)
                if any(r.has_error() or r.result.is_final for r in got):
                    del self._known[rid]
                out += got
            return out

    def get_num_responses_ready(self, id=None) -> int:  # noqa: A002
        with self._cond:
            if id is None:
                return sum(len(v) for v in self._ready.values())
            return len(self._ready.get(id, []))

    def cancel_request(self, id) -> None:  # noqa: A002
        with self._cond:
            st = self._known.get(id)
            if st is not None:
                st.cancelled = True
                self._cond.notify_all()

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        with self._cond:
            out, self._stats = self._stats, []
            return out

    def shutdown(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # -- the loop

    def _push(self, response: Response) -> None:
        self._ready.setdefault(response.request_id, []).append(response)

    def _finish(self, st: _State, reason: FinishReason) -> None:
        res = Result()
        res.is_final = res.is_sequence_final = True
        res.finish_reasons = [reason]
        res.output_token_ids = [st.generated[st.sent:] if st.req.streaming else
                                list(st.generated)]
        if not st.req.output_config.exclude_input_from_output and not st.req.streaming:
            res.output_token_ids = [st.req.input_token_ids + res.output_token_ids[0]]
        st.sent = len(st.generated)
        self._push(Response(st.id, res))

    def _used_blocks(self) -> int:
        return sum(s.blocks for s in self._active)

    def _schedule(self) -> None:
        """Cancellations, then admission (GUARANTEED_NO_EVICT: whole sequence must fit)."""
        for group in (self._queue, self._active):
            for st in [s for s in group if s.cancelled]:
                group.remove(st)
                self._finish(st, FinishReason.CANCELLED)
        while self._queue and len(self._active) < self.max_batch_size:
            st = self._queue[0]
            if self._used_blocks() + st.blocks > self.total_blocks:
                break
            self._active.append(self._queue.pop(0))

    def _step(self, st: _State, token: int) -> None:
        req = st.req
        if req.end_id is not None and token == req.end_id:
            self._finish(st, FinishReason.END_ID)
            self._active.remove(st)
            return
        st.generated.append(token)
        done = None
        if any(w and st.generated[-len(w):] == w for w in req.stop_words or []):
            done = FinishReason.STOP_WORDS
        elif len(st.generated) >= req.max_tokens or (
                self.max_seq_len and len(req.input_token_ids) + len(st.generated)
                >= self.max_seq_len):
            done = FinishReason.LENGTH
        if done is not None:
            self._finish(st, done)
            self._active.remove(st)
        elif req.streaming:
            res = Result()
            res.output_token_ids = [st.generated[st.sent:]]
            st.sent = len(st.generated)
            self._push(Response(st.id, res))

    def _next_token(self, st: _State) -> int:
        seq = st.req.input_token_ids + st.generated
        scores = list(self.model.logits(seq))
        for w in st.req.bad_words or []:
            if len(w) == 1 or seq[len(seq) - len(w) + 1:] == w[:-1]:
                scores[w[-1]] = -math.inf
        return _choose(scores, st.req.sampling_config, st.rng)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    return
                self._schedule()
                if not self._active:
                    self._cond.notify_all()
                    self._cond.wait(0.05)
                    continue
                batch = list(self._active)
            started = time.perf_counter()
            tokens = [self._next_token(st) for st in batch]
            if self.step_delay:
                time.sleep(self.step_delay)
            with self._cond:
                for st, tok in zip(batch, tokens, strict=True):
                    if st in self._active and not st.cancelled:
                        self._step(st, tok)
                self._iter += 1
                self._record_stats((time.perf_counter() - started) * 1e3)
                self._cond.notify_all()

    def _record_stats(self, latency_ms: float) -> None:
        s = IterationStats()
        s.iter = self._iter
        s.iter_latency_ms = latency_ms
        s.num_active_requests = len(self._active)
        s.num_queued_requests = len(self._queue)
        s.max_num_active_requests = self.max_batch_size
        used = self._used_blocks()
        s.kv_cache_stats = KvCacheStats(max_num_blocks=self.total_blocks,
                                        free_num_blocks=self.total_blocks - used,
                                        used_num_blocks=used,
                                        tokens_per_block=self.tokens_per_block)
        self._stats.append(s)
        del self._stats[: max(0, len(self._stats) - self.config.iter_stats_max_iterations)]


def _build_config(path: Path) -> dict:
    import json

    cfg = path / "config.json"
    if not cfg.is_file():
        raise RuntimeError(f"Cannot find engine config {cfg}")
    return json.loads(cfg.read_text()).get("build_config", {})


_PUBLIC = (ModelType, BatchingType, CapacitySchedulerPolicy, CommunicationType, CommunicationMode,
           FinishReason, KvCacheConfig, SchedulerConfig, OrchestratorConfig, ParallelConfig,
           ExecutorConfig, SamplingConfig, OutputConfig, Request, Result, Response,
           KvCacheStats, IterationStats, LoraConfig, GuidedDecodingConfig,
           GuidedDecodingParams)


def module(model: TokenModel | None = None, *, is_leader: bool = True, step_delay: float = 0.0,
           default_blocks: int = 256) -> SimpleNamespace:
    """A module-like object with the bindings' names and an `Executor` bound to `model`."""
    attrs = {
        "model": model or HashModel(),
        "is_leader": is_leader,
        "step_delay": step_delay,
        "default_blocks": default_blocks,
    }
    executor = type("Executor", (Executor,), attrs)
    ns = SimpleNamespace(**{c.__name__: c for c in _PUBLIC}, Executor=executor)
    ns.__name__ = "support.fake_trtllm (stand-in for tensorrt_llm.bindings.executor)"
    return ns


def write_engine_dir(path: Path, *, tp_size: int = 1, pp_size: int = 1, vocab_size: int = 64,
                     max_batch_size: int = 8, max_input_len: int = 256,
                     max_seq_len: int = 512) -> Path:
    """An engine folder as trtllm-build writes it (config.json + empty rank files)."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "version": "1.2.0-fake",
        "pretrained_config": {
            "architecture": "LlamaForCausalLM",
            "dtype": "float16",
            "vocab_size": vocab_size,
            "mapping": {"world_size": tp_size * pp_size, "tp_size": tp_size,
                        "pp_size": pp_size},
        },
        "build_config": {"max_batch_size": max_batch_size, "max_input_len": max_input_len,
                         "max_seq_len": max_seq_len, "max_num_tokens": 8192},
    }, indent=2))
    for r in range(tp_size * pp_size):
        (path / f"rank{r}.engine").write_bytes(b"")
    return path
