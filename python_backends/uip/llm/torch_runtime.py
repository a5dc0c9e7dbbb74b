"""The `torch` runtime of `llm_engine`: transformers' continuous batching behind `Engine`.

transformers 5.24 runs the in-flight batching loop (paged KV cache, chunked prefill, requests
joining and leaving between decode steps) in its own thread. This module adds what a server
needs around it:

- one dispatcher thread that routes the manager's outputs to per-request queues (the manager
  has one shared output queue; `request_id_iter` per consumer would re-queue each other's
  results);
- per-request sampling (temperature / top_k / top_p with a per-request seeded generator) and
  bad words, through one logits processor that the batch loop calls with the request of every
  logits row. transformers' own sampling draws from the global RNG with one setting for the
  whole batch, so it is switched off (the loop then takes the argmax, and a sampled row is
  turned into a one-hot row). Greedy rows are left untouched: greedy output equals
  `model.generate` token for token;
- stop words (finish 'stop'), EOS (the request's `end_id` or the model's), max_new_tokens
  (finish 'length') and cancellation (finish 'cancelled', synthesized here because a cancelled
  request never gets a final output from transformers);
- stats: active and queued sequences, KV blocks in use, tokens generated.

The KV cache is sized from the spec (`num_blocks` x `page_size` tokens), or on a GPU from a
fraction of free memory (`kv_cache_memory_fraction`); never from host RAM.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from uip.core.inputs import InvalidInput
from uip.llm import validation
from uip.llm.engine import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)

if TYPE_CHECKING:
    import torch

    from uip.core.settings import ModelSettings

log = logging.getLogger("uip.llm.torch_runtime")


@dataclass
class TorchEngineConfig:
    """Settings of the torch runtime; `from_settings` reads them from the spec's parameters."""

    num_blocks: int | None = 64  # KV cache capacity in blocks of `page_size` tokens
    page_size: int = 64
    max_batch_tokens: int = 512  # tokens per forward pass (longer prompts are chunked)
    max_requests_per_batch: int | None = None
    kv_cache_memory_fraction: float | None = None  # GPU only, instead of num_blocks
    max_context: int | None = None  # prompt + output tokens; default: max_position_embeddings
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    prefix_caching: bool = True  # share the KV blocks of identical prompt prefixes
    torch_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    warmup: bool = True  # run one short request at start-up

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> TorchEngineConfig:
        fraction = settings.param("kv_cache_memory_fraction", None, float)
        return cls(
            num_blocks=None if fraction else settings.param("num_blocks", 64, int),
            page_size=settings.param("page_size", 64, int),
            max_batch_tokens=settings.param("max_batch_tokens", 512, int),
            max_requests_per_batch=settings.param("max_requests_per_batch", None, int),
            kv_cache_memory_fraction=fraction,
            max_context=int(settings.limits["max_context"]) if "max_context" in settings.limits
            else None,
            dtype=settings.param("dtype", "auto"),
            device=settings.device,
            attn_implementation=settings.param("attn_implementation", "sdpa"),
            prefix_caching=settings.param("prefix_caching", True, bool),
            torch_threads=settings.param("torch_threads", 0, int),
        )


@dataclass
class _RowControl:
    """What the logits processor does with one request's rows: sample and/or ban words."""

    sampling: SamplingParams | None  # None = greedy
    seed: int
    bad_words: list[list[int]]
    generator: torch.Generator | None = None

    def apply(self, row: torch.Tensor, sequence: list[int]) -> None:
        import torch

        if self.bad_words:
            banned = [w[-1] for w in self.bad_words
                      if len(w) == 1 or (len(sequence) >= len(w) - 1
                                         and sequence[len(sequence) - len(w) + 1:] == w[:-1])]
            if banned:
                row[banned] = -math.inf
        if self.sampling is None:
            return
        sp = self.sampling
        logits = row / sp.temperature if sp.temperature else row.clone()
        if sp.top_k:
            k = min(sp.top_k, logits.numel())
            kth = torch.topk(logits, k).values[-1]
            logits[logits < kth] = -math.inf
        if sp.top_p is not None and sp.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) >= sp.top_p  # keeps >= 1 token
            logits[order[drop]] = -math.inf
        probs = torch.softmax(logits, dim=-1)
        if self.generator is None or self.generator.device != row.device:
            self.generator = torch.Generator(device=row.device)
            self.generator.manual_seed(self.seed)
        token = int(torch.multinomial(probs, 1, generator=self.generator))
        row.fill_(-math.inf)
        row[token] = 0.0


def _make_logits_processor(controls: dict[str, _RowControl]):
    """A continuous-batching logits processor that knows which request each row belongs to.

    The batch loop calls `prepare_tensor_args` with the requests that get a new token, in row
    order, then (in the same thread, synchronous batching) `__call__` with their logits.
    """
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class PerRequestControl(ContinuousBatchingLogitsProcessor):
        supported_kwargs: dict[str, type] = {}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            self.rows: list = []

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
            self.rows = [fs.state for fs in requests_with_new_token]
            return torch.zeros(len(self.rows), dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            out = None
            # rows past len(self.rows) are padding of this batch: never touched
            for i, state in enumerate(self.rows[: scores.size(0)]):
                control = controls.get(state.request_id)
                if control is None or (control.sampling is None and not control.bad_words):
                    continue
                if out is None:
                    out = scores.clone()
                control.apply(out[i], state.initial_tokens + state.generated_tokens)
            return scores if out is None else out

    return PerRequestControl()


@dataclass
class _Request:
    id: int
    cb_id: str
    request: GenerationRequest
    eos: frozenset[int]
    results: queue.Queue = field(default_factory=queue.Queue)
    tokens: list[int] = field(default_factory=list)
    seen: int = 0  # generated tokens already taken from the manager's outputs
    done: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def hits_stop_word(self) -> bool:
        toks = self.tokens
        return any(w and toks[-len(w):] == w for w in self.request.stop_words)


class TorchEngine(Engine):
    """In-flight batching with transformers' continuous batching manager."""

    def __init__(self, model_dir: Path | str | None = None, config: TorchEngineConfig | None = None,
                 model=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.config = cfg = config or TorchEngineConfig()
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        if model is None:
            if model_dir is None:
                raise ValueError("TorchEngine needs a model folder or a loaded model")
            dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype, None)
            if not isinstance(dtype, str | torch.dtype):
                raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got "
                                 f"{cfg.dtype!r}")
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=dtype, attn_implementation=cfg.attn_implementation)
            model = model.to(cfg.device)
        self.model = model.eval()
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.max_context = int(cfg.max_context or positions or 2048)
        if positions and self.max_context > positions:
            raise ValueError(f"max_context {self.max_context} is beyond the model's "
                             f"max_position_embeddings {positions}")

        base = self.model.generation_config
        eos = base.eos_token_id if base.eos_token_id is not None else self.model.config.eos_token_id
        self.default_eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        # Greedy argmax inside the loop; sampling and bad words are per request (see module doc).
        gen_config = GenerationConfig(
            do_sample=False,
            eos_token_id=sorted(self.default_eos) if self.default_eos else -1,
            pad_token_id=base.pad_token_id,
            bos_token_id=base.bos_token_id,
        )
        on_gpu = torch.device(cfg.device).type == "cuda"
        if cfg.kv_cache_memory_fraction is not None and not on_gpu:
            raise ValueError("kv_cache_memory_fraction sizes the KV cache from GPU memory; on CPU "
                             "set num_blocks (and page_size) instead")
        if cfg.num_blocks is None and cfg.kv_cache_memory_fraction is None:
            raise ValueError("set num_blocks (or kv_cache_memory_fraction on a GPU): the default "
                             "would size the KV cache from host memory")
        cb_config = ContinuousBatchingConfig(
            num_blocks=cfg.num_blocks,
            page_size=cfg.page_size,
            max_batch_tokens=cfg.max_batch_tokens,
            max_requests_per_batch=cfg.max_requests_per_batch,
            max_memory_percent=cfg.kv_cache_memory_fraction,
            allow_block_sharing=cfg.prefix_caching,
            # the per-request logits processor runs Python per row: no graphs, no async I/O
            use_cuda_graph=False,
            use_async_batching=False,
            auto_switch_to_flash=False,
        )
        self._controls: dict[str, _RowControl] = {}
        self._manager = self.model.init_continuous_batching(
            generation_config=gen_config, continuous_batching_config=cb_config)
        self._install_logits_processor()

        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._by_cb: dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._tokens_generated = 0
        self._stopping = False
        self._failed: str | None = None

        self._manager.start()
        self._wait_until_running()
        self._dispatcher = threading.Thread(target=self._dispatch, name="uip-llm-dispatch",
                                            daemon=True)
        self._dispatcher.start()
        if cfg.warmup:
            self._warmup()

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> TorchEngine:
        return cls(settings.artifact_dir(), TorchEngineConfig.from_settings(settings))

    def _install_logits_processor(self) -> None:
        lp = self._manager.logit_processor
        lp.logits_processor.append(_make_logits_processor(self._controls))
        lp.tensors_required += 1
        lp.do_processing = True

    def _wait_until_running(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self._manager.batch_processor is None:
            status = self._manager.background_thread_status
            if status.fatal_error is not None or not self._manager.is_running():
                raise RuntimeError(f"continuous batching failed to start: {status.fatal_error}")
            if time.monotonic() > deadline:
                raise RuntimeError("continuous batching did not start in time")
            time.sleep(0.005)
        self._cache = self._manager.batch_processor.cache

    def _warmup(self) -> None:
        rid = self.enqueue(GenerationRequest(input_ids=[0], max_new_tokens=2, streaming=False))
        while not any(r.is_final for r in self.await_responses(rid, timeout=60)):
            pass
        self._tokens_generated = 0

    # ------------------------------------------------------------------------- Engine API

    @property
    def kv_blocks_total(self) -> int:
        return int(self._cache.num_blocks)

    def validate(self, request: GenerationRequest) -> SamplingParams | None:
        """Raises InvalidInput for a request this engine cannot run; returns its sampling."""
        sampling = validation.check_generation(request, self.vocab_size, self.max_context,
                                               "the engine's max_context")
        n = len(request.input_ids)
        blocks = math.ceil((n + request.max_new_tokens) / self.config.page_size)
        if blocks > self.kv_blocks_total:
            raise InvalidInput(
                f"prompt + max_new_tokens needs {blocks} KV cache blocks of "
                f"{self.config.page_size} tokens; the cache has {self.kv_blocks_total}")
        return sampling

    def enqueue(self, request: GenerationRequest) -> int:
        sampling = self.validate(request)
        if self._stopping or self._failed:
            raise RuntimeError(self._failed or "the engine is shutting down")
        rid = next(self._ids)
        cb_id = f"uip-{rid}"
        eos = frozenset([request.end_id]) if request.end_id is not None else self.default_eos
        req = _Request(rid, cb_id, request, eos)
        bad_words = [list(w) for w in request.bad_words if w]
        if sampling is not None or bad_words:
            seed = sampling.seed if sampling is not None and sampling.seed is not None \
                else secrets.randbits(63)
            self._controls[cb_id] = _RowControl(sampling, seed, bad_words)
        with self._lock:
            self._requests[rid] = req
            self._by_cb[cb_id] = req
        added = self._manager.add_request(
            list(request.input_ids), request_id=cb_id, max_new_tokens=request.max_new_tokens,
            streaming=True, eos_token_id=sorted(eos) if eos else -1)
        if added is None:
            with self._lock:
                self._forget(req)
                self._requests.pop(rid, None)
            raise RuntimeError("the continuous batching loop refused the request (stopping)")
        return rid

    def await_responses(self, request_id: int, timeout: float | None = None
                        ) -> list[GenerationResult]:
        with self._lock:
            req = self._requests.get(request_id)
        if req is None:
            raise KeyError(f"unknown or finished request {request_id}")
        try:
            items = [req.results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(req.results.get_nowait())
            except queue.Empty:
                break
        if items[-1].is_final:
            with self._lock:
                self._requests.pop(request_id, None)
        return items

    def cancel(self, request_id: int) -> None:
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.done:
                return
            self._manager.cancel_request(req.cb_id)
            self._finish(req, [], "cancelled")

    def stats(self) -> EngineStats:
        active = queued = used = 0
        bp = self._manager.batch_processor
        if bp is not None:
            try:
                active = len(bp.scheduler.active_requests)
                queued = len(bp.scheduler.waiting_requests)
                used = self._kv_blocks_used()
            except RuntimeError:  # a dict resized while we counted: report the last known
                pass
        queued += self._manager.input_queue.qsize()
        return EngineStats(active_requests=active, queued_requests=queued, kv_blocks_used=used,
                           kv_blocks_total=self.kv_blocks_total,
                           tokens_generated=self._tokens_generated)

    def _kv_blocks_used(self) -> int:
        cache = self._cache
        used_bytes = 0
        for allocator in cache.cache_allocators.values():
            ids = set()
            for table in list(allocator.block_table.values()):
                ids.update(table)
            used_bytes += len(ids) * allocator.bytes_per_block
        per_block = cache.num_sectors * cache.bytes_per_sector / max(cache.num_blocks, 1)
        return math.ceil(used_bytes / per_block)

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        with self._lock:
            for req in list(self._requests.values()):
                if not req.done:
                    self._manager.cancel_request(req.cb_id)
                    self._finish(req, [], "cancelled")
        try:
            self._manager.stop(block=True, timeout=30)
        finally:
            self._dispatcher.join(timeout=5)

    # ------------------------------------------------------------------------ dispatching

    def _dispatch(self) -> None:
        manager = self._manager
        while not self._stopping:
            out = manager.get_result(timeout=0.05)
            if out is not None:
                try:
                    self._route(out)
                except Exception:  # noqa: BLE001 - never let the dispatcher die
                    log.exception("routing output of %s failed", out.request_id)
                continue
            if not manager.is_running() and not self._stopping:
                error = manager.background_thread_status.fatal_error
                self._fail_all(f"the generation loop stopped: {error}")
                time.sleep(0.05)

    def _route(self, out) -> None:
        with self._lock:
            req = self._by_cb.get(out.request_id)
            if req is None or req.done:
                return
            if out.error is not None:
                self._finish(req, [], "error", error=str(out.error))
                return
            new = out.generated_tokens[req.seen:]
            req.seen = len(out.generated_tokens)
            accepted: list[int] = []
            reason: FinishReason | None = None
            for token in new:
                accepted.append(token)
                req.tokens.append(token)
                if token in req.eos:
                    reason = "stop"
                    break
                if req.hits_stop_word():
                    reason = "stop"
                    break
                if len(req.tokens) >= req.request.max_new_tokens:
                    reason = "length"
                    break
            self._tokens_generated += len(accepted)
            if reason is None and out.is_finished():
                reason = "length"
            if reason is not None:
                if not out.is_finished():
                    self._manager.cancel_request(req.cb_id)
                self._finish(req, accepted, reason)
            elif accepted and req.request.streaming:
                req.results.put(GenerationResult(req.id, accepted, is_final=False))

    def _finish(self, req: _Request, new_tokens: list[int], reason: FinishReason,
                error: str | None = None) -> None:
        """Deliver the final result (lock held)."""
        req.done = True
        tokens = new_tokens if req.request.streaming else list(req.tokens)
        req.results.put(GenerationResult(req.id, tokens, is_final=True, finish_reason=reason,
                                         error=error))
        self._forget(req)

    def _forget(self, req: _Request) -> None:
        self._by_cb.pop(req.cb_id, None)
        self._controls.pop(req.cb_id, None)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self._failed = message
            for req in list(self._by_cb.values()):
                if not req.done:
                    self._finish(req, [], "error", error=message)
