"""The `tensorrt_llm` runtime of `llm_engine`: TensorRT-LLM's executor behind `Engine`.

Targets TensorRT-LLM 1.2.x (`tensorrt_llm.bindings.executor`, the TensorRT engine flow) as
shipped in nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3. The module is imported lazily,
when an engine is created, so this file imports (and its pure parts are tested) anywhere.

Pure parts, all taking the executor module as an argument so tests pass a stand-in
(`tests/support/fake_trtllm.py`):
- `ExecutorSettings.from_parameters` (config.pbtxt parameters -> settings, checked);
- `executor_config(settings, trtllm)` (-> `ExecutorConfig`: in-flight batching, paged KV cache
  free-memory fraction and block reuse, capacity scheduler policy, leader/orchestrator MPI mode);
- `to_executor_request(request, trtllm, info)` and `to_result(response)`;
- guided decoding (structured output): spec parameters `guided_decoding_backend: xgrammar` and
  `tokenizer_dir` (the checkpoint's tokenizer folder) give the executor a
  `GuidedDecodingConfig` (`guided_decoding_config`); a request's `guide` becomes
  `GuidedDecodingParams` (`guided_decoding_params`), TensorRT-LLM's documented API.

LoRA (spec parameters `lora_dir`, `lora_max_rank`, `lora_dtype`): a request's `lora_name` goes
to the executor as `LoraConfig` (uip.trtllm.lora); one that fails with "not found in cache" is
sent again with the adapter's weights, under the same request id for the caller.

Multi-GPU (tp x pp ranks under mpirun, see `uip.launch.mpi`): every rank creates the executor
in LEADER mode; only rank 0 can enqueue. On the other ranks the constructor blocks in
`shutdown()` until rank 0 shuts down, as TensorRT-LLM's own Triton model does, so their
tritonserver serves nothing.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from uip.core.inputs import InvalidInput
from uip.core.settings import FALSE_WORDS, TRUE_WORDS
from uip.llm import validation
from uip.llm.engine import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from uip.llm.guided import Guide
from uip.trtllm.engine_dir import EngineDir
from uip.trtllm.lora import NOT_IN_CACHE, TrtllmLora

TRTLLM_CONTAINER = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
EXECUTOR_MODULE = "tensorrt_llm.bindings.executor"


class TrtllmUnavailable(RuntimeError):
    """TensorRT-LLM cannot be imported here; the message names the container to use."""


def import_executor_module() -> ModuleType:
    try:
        return importlib.import_module(EXECUTOR_MODULE)
    except ImportError as e:
        raise TrtllmUnavailable(
            f"runtime 'tensorrt_llm' needs TensorRT-LLM 1.2.x, which this Python "
            f"({sys.executable}) cannot import ({e}). TensorRT-LLM is not installable from PyPI "
            f"here: run the server in {TRTLLM_CONTAINER} (docker/Dockerfile.gpu builds that "
            "image with this project), or set the spec's runtime to 'torch'."
        ) from None


# --------------------------------------------------------------------------- settings

BATCHING_TYPES = {"inflight": "INFLIGHT", "inflight_fused_batching": "INFLIGHT", "static": "STATIC"}
SCHEDULER_POLICIES = {
    "guaranteed_no_evict": "GUARANTEED_NO_EVICT",
    "max_utilization": "MAX_UTILIZATION",
}
COMMUNICATION_MODES = {"leader": "LEADER", "orchestrator": "ORCHESTRATOR"}


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {v!r}")


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor knobs a spec sets as `parameters` of llm_engine (names as in TensorRT-LLM's
    own Triton model where one exists)."""

    batching_type: str = "inflight"
    batch_scheduler_policy: str = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_tokens_in_paged_kv_cache: int | None = None
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    max_queue_size: int | None = None
    gpu_device_ids: tuple[int, ...] | None = None
    communication_mode: str = "leader"
    executor_worker_path: str | None = None
    iter_stats_max_iterations: int | None = None
    guided_decoding_backend: str | None = None  # xgrammar: structured output
    tokenizer_dir: str | None = None  # the tokenizer guided decoding compiles against

    def __post_init__(self) -> None:
        if self.batching_type not in BATCHING_TYPES:
            raise ValueError(f"batching_type must be one of {sorted(BATCHING_TYPES)}, "
                             f"got {self.batching_type!r}")
        if self.batch_scheduler_policy not in SCHEDULER_POLICIES:
            raise ValueError(f"batch_scheduler_policy must be one of "
                             f"{sorted(SCHEDULER_POLICIES)}, got {self.batch_scheduler_policy!r}")
        if self.guided_decoding_backend not in (None, "xgrammar"):
            raise ValueError("guided_decoding_backend must be xgrammar (or unset), got "
                             f"{self.guided_decoding_backend!r}")
        if self.guided_decoding_backend and not self.tokenizer_dir:
            raise ValueError("guided_decoding_backend needs tokenizer_dir (the folder with "
                             "the model's tokenizer.json)")
        if self.communication_mode not in COMMUNICATION_MODES:
            raise ValueError(f"communication_mode must be one of {sorted(COMMUNICATION_MODES)}, "
                             f"got {self.communication_mode!r}")
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            raise ValueError("kv_cache_free_gpu_mem_fraction must be in (0, 1], got "
                             f"{self.kv_cache_free_gpu_mem_fraction}")
        for name in ("max_tokens_in_paged_kv_cache", "max_queue_size",
                     "iter_stats_max_iterations"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> ExecutorSettings:
        """From a model's config.pbtxt parameters; unrelated keys are ignored. A bad value is a
        ValueError naming the parameter."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in params:
                continue
            raw = str(params[f.name]).strip()
            try:
                if f.name in ("enable_kv_cache_reuse", "enable_chunked_context"):
                    kw[f.name] = _bool(raw)
                elif f.name == "kv_cache_free_gpu_mem_fraction":
                    kw[f.name] = float(raw)
                elif f.name in ("max_tokens_in_paged_kv_cache", "max_queue_size",
                                "iter_stats_max_iterations"):
                    kw[f.name] = int(raw)
                elif f.name == "gpu_device_ids":
                    kw[f.name] = tuple(int(x) for x in raw.split(",") if x.strip())
                else:
                    kw[f.name] = raw if f.name in ("executor_worker_path", "tokenizer_dir") \
                        else raw.lower()
            except ValueError as e:
                raise ValueError(f"parameter {f.name}={raw!r}: {e}") from None
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"llm_engine parameters: {e}") from None

    def to_parameters(self) -> dict[str, str | int | float | bool]:
        """The spec `parameters` that reproduce these settings (None fields are left out)."""
        out: dict[str, str | int | float | bool] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = ",".join(map(str, v)) if isinstance(v, tuple) else v
        return out


def executor_config(s: ExecutorSettings, trtllm: Any, max_beam_width: int = 1,
                    eos_token_ids: tuple[int, ...] = ()):
    """`trtllm.ExecutorConfig` for these settings (in-flight batching, paged KV cache, guided
    decoding when configured)."""
    kv_kwargs: dict[str, Any] = {
        "enable_block_reuse": s.enable_kv_cache_reuse,
        "free_gpu_memory_fraction": s.kv_cache_free_gpu_mem_fraction,
    }
    if s.max_tokens_in_paged_kv_cache is not None:
        kv_kwargs["max_tokens"] = s.max_tokens_in_paged_kv_cache
    kwargs: dict[str, Any] = {
        "max_beam_width": max_beam_width,
        "batching_type": getattr(trtllm.BatchingType, BATCHING_TYPES[s.batching_type]),
        "kv_cache_config": trtllm.KvCacheConfig(**kv_kwargs),
        "scheduler_config": trtllm.SchedulerConfig(
            capacity_scheduler_policy=getattr(
                trtllm.CapacitySchedulerPolicy, SCHEDULER_POLICIES[s.batch_scheduler_policy])),
        "enable_chunked_context": s.enable_chunked_context,
    }
    parallel = parallel_config(s, trtllm)
    if parallel is not None:
        kwargs["parallel_config"] = parallel
    if s.max_queue_size is not None:
        kwargs["max_queue_size"] = s.max_queue_size
    if s.iter_stats_max_iterations is not None:
        kwargs["iter_stats_max_iterations"] = s.iter_stats_max_iterations
    if s.guided_decoding_backend:
        kwargs["guided_decoding_config"] = guided_decoding_config(
            Path(s.tokenizer_dir or ""), trtllm, eos_token_ids)
    return trtllm.ExecutorConfig(**kwargs)


def guided_decoding_config(tokenizer_dir: Path, trtllm: Any, eos_token_ids: tuple[int, ...]):
    """`GuidedDecodingConfig` (xgrammar) from a tokenizer folder: the vocabulary in id order,
    the serialized fast tokenizer and the stop tokens, as TensorRT-LLM's Triton model builds it."""
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer_dir {tokenizer_dir}: no tokenizer.json (guided decoding "
                         "needs the model's fast tokenizer)")
    text = path.read_text()
    vocab = Tokenizer.from_str(text).get_vocab(with_added_tokens=True)
    encoded = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return trtllm.GuidedDecodingConfig(
        backend=trtllm.GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR,
        encoded_vocab=encoded, tokenizer_str=text,
        stop_token_ids=[int(t) for t in eos_token_ids] or None)


GUIDE_TYPES = {"json_object": "JSON", "json_schema": "JSON_SCHEMA", "regex": "REGEX",
               "grammar": "EBNF_GRAMMAR", "structural_tag": "STRUCTURAL_TAG"}


def _legacy_structural_tag(value: str) -> str:
    """TensorRT-LLM 1.2's STRUCTURAL_TAG guide is xgrammar's first format ({"structures":
    [{"begin", "schema", "end"}], "triggers"}): a `triggered_tags` format of JSON-schema tags
    converts to it; other structural tags do not run on this runtime."""
    fmt = json.loads(value)
    tags = fmt.get("tags") or []
    if fmt.get("type") != "triggered_tags" or not all(
            isinstance(t.get("content"), dict) and t["content"].get("type") == "json_schema"
            and isinstance(t.get("begin"), str) and isinstance(t.get("end"), str)
            for t in tags):
        raise InvalidInput("'guided_decoding': the tensorrt_llm runtime takes structural tags "
                           "of type triggered_tags whose tags hold JSON schemas only")
    return json.dumps({"structures": [{"begin": t["begin"],
                                       "schema": t["content"]["json_schema"],
                                       "end": t["end"]} for t in tags],
                       "triggers": list(fmt.get("triggers") or [])})


def guided_decoding_params(guide: Guide, trtllm: Any):
    """A request's guide as `trtllm.GuidedDecodingParams(guide_type, guide)`."""
    params = trtllm.GuidedDecodingParams
    kind = getattr(params.GuideType, GUIDE_TYPES[guide.kind])
    if guide.kind == "json_object":
        return params(guide_type=kind)
    value = _legacy_structural_tag(guide.value) if guide.kind == "structural_tag" \
        else guide.value
    return params(guide_type=kind, guide=value)


def parallel_config(s: ExecutorSettings, trtllm: Any):
    """None (the executor's default: MPI, LEADER mode over the ranks mpirun started) unless
    devices or orchestrator mode are asked for."""
    if s.gpu_device_ids is None and s.communication_mode == "leader":
        return None
    kwargs: dict[str, Any] = {
        "communication_type": trtllm.CommunicationType.MPI,
        "communication_mode": getattr(trtllm.CommunicationMode,
                                      COMMUNICATION_MODES[s.communication_mode]),
    }
    if s.gpu_device_ids is not None:
        kwargs["device_ids"] = list(s.gpu_device_ids)
    if s.communication_mode == "orchestrator":
        kwargs["orchestrator_config"] = trtllm.OrchestratorConfig(
            is_orchestrator=True, worker_executable_path=s.executor_worker_path or "")
    return trtllm.ParallelConfig(**kwargs)


# --------------------------------------------------------------------------- requests


def sampling_config(p: SamplingParams | None, trtllm: Any):
    """None (greedy) is top_k=1; otherwise only what the request set (temperature 0 and
    top_k 1 were already folded into greedy by `uip.llm.sampling.effective`)."""
    if p is None:
        return trtllm.SamplingConfig(beam_width=1, top_k=1)
    kwargs: dict[str, Any] = {}
    if p.seed is not None:
        kwargs["seed"] = int(p.seed)
    if p.temperature is not None:
        kwargs["temperature"] = float(p.temperature)
    if p.top_k:
        kwargs["top_k"] = int(p.top_k)
    if p.top_p is not None:
        kwargs["top_p"] = float(p.top_p)
    return trtllm.SamplingConfig(beam_width=1, **kwargs)


def check_request(req: GenerationRequest, info: EngineDir | None) -> SamplingParams | None:
    """Validate against the contract and the engine's build limits, as the torch runtime does
    (same messages, `InvalidInput`); returns the effective sampling (None = greedy)."""
    n = len(req.input_ids)
    if info is not None and info.max_input_len is not None and n > info.max_input_len:
        raise InvalidInput(
            f"the prompt has {n} tokens, more than this engine's max_input_len "
            f"{info.max_input_len} (set at build time with --max-input-len)")
    return validation.check_generation(
        req, info.vocab_size if info is not None else None,
        info.max_seq_len if info is not None else None, "the engine's max_seq_len")


def with_default_eos(req: GenerationRequest, eos_token_ids: tuple[int, ...]) -> GenerationRequest:
    """A request without end_id ends at the model's EOS, as with the torch runtime: the first
    EOS id becomes end_id, further ones (e.g. Llama 3's <|eot_id|>) single-token stop words."""
    if req.end_id is not None or not eos_token_ids:
        return req
    extra = [[e] for e in eos_token_ids[1:] if [e] not in req.stop_words]
    return replace(req, end_id=eos_token_ids[0], stop_words=[*req.stop_words, *extra])


def to_executor_request(req: GenerationRequest, trtllm: Any, info: EngineDir | None = None,
                        lora_config: Any = None, guided: bool = True):
    """`trtllm.Request` for one generation request: only new tokens come back
    (exclude_input_from_output), one response per step when streaming. `guided`: whether
    the executor was configured for guided decoding."""
    sampling = check_request(req, info)
    kwargs: dict[str, Any] = {
        "streaming": bool(req.streaming),
        "sampling_config": sampling_config(sampling, trtllm),
        "output_config": trtllm.OutputConfig(exclude_input_from_output=True),
    }
    if req.end_id is not None:
        kwargs["end_id"] = int(req.end_id)
    pad = req.pad_id if req.pad_id is not None else req.end_id
    if pad is not None:
        kwargs["pad_id"] = int(pad)
    if req.stop_words:
        kwargs["stop_words"] = [[int(t) for t in w] for w in req.stop_words if w]
    if req.bad_words:
        kwargs["bad_words"] = [[int(t) for t in w] for w in req.bad_words if w]
    if lora_config is not None:
        kwargs["lora_config"] = lora_config
    if req.guide is not None:
        if not guided:
            raise InvalidInput("'guided_decoding': this llm_engine runs without guided "
                               "decoding; set its parameters guided_decoding_backend: xgrammar "
                               "and tokenizer_dir")
        kwargs["guided_decoding_params"] = guided_decoding_params(req.guide, trtllm)
    return trtllm.Request([int(t) for t in req.input_ids], int(req.max_new_tokens),
                          **kwargs)


_FINISH = {
    "END_ID": "stop",
    "STOP_WORDS": "stop",
    "LENGTH": "length",
    "CANCELLED": "cancelled",
    "TIMED_OUT": "cancelled",
}


def _name(reason: Any) -> str:
    return (getattr(reason, "name", None) or str(reason).rsplit(".", 1)[-1]).upper()


def finish_reason(reason: Any) -> FinishReason | None:
    """TensorRT-LLM's FinishReason (pybind or nanobind enum) -> the contract's reason."""
    if reason is None:
        return None
    return _FINISH.get(_name(reason))  # type: ignore[return-value]


def reason_name(response: Any) -> str | None:
    """The executor's finish reason of a final response, by name (END_ID, STOP_WORDS, ...)."""
    if response.has_error() or not response.result.is_final:
        return None
    reasons = list(getattr(response.result, "finish_reasons", None) or [])
    return _name(reasons[0]) if reasons else None


def to_result(response: Any) -> GenerationResult:
    """One executor response -> GenerationResult (beam 0)."""
    rid = int(response.request_id)
    if response.has_error():
        return GenerationResult(rid, [], True, "error", str(response.error_msg))
    result = response.result
    beams = result.output_token_ids
    tokens = [int(t) for t in beams[0]] if beams else []
    if not result.is_final:
        return GenerationResult(rid, tokens, False)
    reasons = list(getattr(result, "finish_reasons", None) or [])
    reason = finish_reason(reasons[0]) if reasons else None
    return GenerationResult(rid, tokens, True, reason or "stop")


# --------------------------------------------------------------------------- engine


@dataclass
class _Live:
    end_id: int | None
    last_token: int | None = None
    exec_id: int = 0  # the executor's id now (another one after a LoRA resend)
    request: GenerationRequest | None = None  # kept for a LoRA resend


def _wait(timeout: float | None) -> timedelta | None:
    return None if timeout is None else timedelta(seconds=max(0.0, timeout))


def parse_eos(value: str | None) -> tuple[int, ...]:
    """The `eos_token_ids` parameter: comma-separated ids (the build script writes it)."""
    if not value:
        return ()
    try:
        return tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"parameter eos_token_ids={value!r}: expected comma-separated token "
                         "ids") from None


class TrtllmEngine(Engine):
    """TensorRT-LLM's executor (in-flight batching, paged KV cache) as an `Engine`.

    Output semantics are the torch runtime's (one contract): a sequence that ends on its end id
    carries that id as its last token (TensorRT-LLM leaves it out; it is added back here unless
    already there), stop words stay in the output, and a request without end_id ends at the
    model's EOS (`eos_token_ids`).
    """

    def __init__(self, engine_dir: Path | str, settings: ExecutorSettings | None = None, *,
                 eos_token_ids: tuple[int, ...] = (), executor_module: Any = None,
                 check_ranks: bool = True, lora: TrtllmLora | None = None):
        self.trtllm = executor_module if executor_module is not None else import_executor_module()
        self.engine_dir = Path(engine_dir)
        self.info = EngineDir.read(self.engine_dir, check_ranks=check_ranks)
        self.settings = settings or ExecutorSettings()
        self.eos_token_ids = tuple(eos_token_ids)
        config = executor_config(self.settings, self.trtllm, eos_token_ids=self.eos_token_ids)
        self._executor = self.trtllm.Executor(
            self.engine_dir, self.trtllm.ModelType.DECODER_ONLY, config)
        self._lock = threading.Lock()
        self._live: dict[int, _Live] = {}  # by the caller's id: the executor's first one
        self._caller_id: dict[int, int] = {}  # executor id of a resent request -> caller's
        self.lora = lora
        self._tokens = 0
        self._last_stats: Any = None
        self._closed = False
        self.is_leader = bool(self._executor.can_enqueue_requests())
        if not self.is_leader:
            # Worker rank (LEADER mode, rank > 0): it takes part in every step that rank 0
            # schedules, from inside the executor, and waits here until rank 0 shuts down.
            self._executor.shutdown()
            self._closed = True

    @classmethod
    def from_settings(cls, settings, executor_module: Any = None) -> TrtllmEngine:
        """From a `uip.core.settings.ModelSettings` (artifact = the engine folder)."""
        params = settings.parameters
        lora = None
        if params.get("lora_dir"):
            from uip.core.paths import resolve_artifact

            lora = TrtllmLora(resolve_artifact(params["lora_dir"]),
                              int(params.get("lora_max_rank", 64)),
                              params.get("lora_dtype", "float16"))
        return cls(settings.artifact_dir(), ExecutorSettings.from_parameters(params),
                   eos_token_ids=parse_eos(params.get("eos_token_ids")),
                   executor_module=executor_module, lora=lora)

    def _lora_config(self, request: GenerationRequest, resend: bool = False):
        if request.lora_name is None:
            return None
        if self.lora is None:
            raise InvalidInput(f"lora_name {request.lora_name!r} given, but this deployment "
                               "serves no LoRA adapters (no lora_dir parameter)")
        return self.lora.config(request.lora_name, self.trtllm, resend)

    def enqueue(self, request: GenerationRequest) -> int:
        request = with_default_eos(request, self.eos_token_ids)
        req = to_executor_request(request, self.trtllm, self.info, self._lora_config(request),
                                  guided=bool(self.settings.guided_decoding_backend))
        if not self.is_leader:
            raise RuntimeError("this rank is a TensorRT-LLM worker (rank > 0): only rank 0 "
                               "serves requests")
        if self._closed:
            raise RuntimeError("the engine is shut down")
        with self._lock:
            rid = int(self._executor.enqueue_request(req))
            self._live[rid] = _Live(request.end_id, exec_id=rid,
                                    request=request if request.lora_name else None)
        return rid

    def _resend(self, live: _Live, caller_id: int) -> None:
        """Enqueue a LoRA request again with its adapter's weights (lock held)."""
        assert live.request is not None
        req = to_executor_request(live.request, self.trtllm, self.info,
                                  self._lora_config(live.request, resend=True))
        live.exec_id = int(self._executor.enqueue_request(req))
        live.request = None  # once
        self._caller_id[live.exec_id] = caller_id

    # -------------------------------------------------------------- LoRA control (uip lora)

    def adapters(self) -> dict:
        if self.lora is None:
            return {"enabled": False, "available": [], "loaded": []}
        return self.lora.status()

    def load_adapter(self, name: str) -> None:
        """Check the adapter on disk; its next request sends the weights."""
        if self.lora is None:
            raise InvalidInput("this deployment serves no LoRA adapters (no lora_dir parameter)")
        self.lora.adapters.read(name)
        self.lora.forget(name)

    def unload_adapter(self, name: str) -> bool:
        return self.lora is not None and self.lora.forget(name)

    def await_responses(self, request_id: int, timeout: float | None = None
                        ) -> list[GenerationResult]:
        with self._lock:
            live = self._live.get(request_id)
        if live is None:
            raise KeyError(f"unknown or finished request {request_id}")
        return self._results(self._executor.await_responses(live.exec_id,
                                                             timeout=_wait(timeout)))

    def await_any(self, timeout: float | None = None) -> list[GenerationResult]:
        return self._results(self._executor.await_responses(timeout=_wait(timeout)))

    def _results(self, responses: list) -> list[GenerationResult]:
        """The executor's responses as results, with the end id put back (see the class)."""
        out = []
        with self._lock:
            for resp in responses:
                r = to_result(resp)
                caller = self._caller_id.pop(r.request_id, r.request_id) if r.is_final \
                    else self._caller_id.get(r.request_id, r.request_id)
                live = self._live.get(caller)
                if live is None:  # a response to a request this engine already finished
                    continue
                if r.error is not None and NOT_IN_CACHE in r.error and live.request:
                    self._resend(live, caller)  # the executor evicted the adapter
                    continue
                r = replace(r, request_id=caller)
                if r.tokens:
                    live.last_token = r.tokens[-1]
                if r.is_final and live.end_id is not None and live.last_token != live.end_id \
                        and reason_name(resp) == "END_ID":
                    r = replace(r, tokens=[*r.tokens, live.end_id])
                self._tokens += len(r.tokens)
                if r.is_final:
                    self._live.pop(r.request_id, None)
                out.append(r)
        return out

    def cancel(self, request_id: int) -> None:
        with self._lock:
            live = self._live.get(request_id)
        if live is not None and not self._closed:
            self._executor.cancel_request(live.exec_id)

    def stats(self) -> EngineStats:
        """From the executor's latest iteration stats. Between iterations (idle) those are the
        last ones seen: with no request in flight, nothing is active, queued or held."""
        if not self._closed:
            latest = list(self._executor.get_latest_iteration_stats() or [])
            if latest:
                self._last_stats = latest[-1]
        s = self._last_stats
        kv = getattr(s, "kv_cache_stats", None) if s is not None else None
        with self._lock:
            live, tokens = len(self._live), self._tokens
        active = min(int(s.num_active_requests), live) if s is not None else live
        queued = min(int(s.num_queued_requests), live - active) if s is not None else 0
        return EngineStats(
            active_requests=active,
            queued_requests=queued,
            kv_blocks_used=int(kv.used_num_blocks) if kv is not None and live else 0,
            kv_blocks_total=int(kv.max_num_blocks) if kv is not None else 0,
            tokens_generated=tokens,
        )

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown()
