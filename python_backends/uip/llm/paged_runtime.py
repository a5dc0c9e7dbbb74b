"""`PagedEngine`: our own in-flight batching engine behind `Engine` (paged KV cache).

One engine thread runs the step loop: take new requests and cancels, let the scheduler pick
this step's decode tokens and prefill chunks, run one batched forward of the model runner
(llama.py) over the paged cache, choose one token per finished row on the device
(paged_sampling.py), and deliver results to per-request queues. The semantics are the
`Engine` contract's (tests/unit/engine_contract.py): EOS = the request's end_id or the model's
eos ids (finish 'stop', the EOS token included), stop words (finish 'stop', included), bad
words, per-request seeded sampling, max_new_tokens (finish 'length'), cancel (finish
'cancelled' at once; its blocks are freed at the start of the next step).

Guided decoding hook: `enqueue(request, logits_mask=fn)`; `fn(generated_tokens)` runs in the
engine thread before each token and returns a bool tensor [vocab] of allowed tokens, or None.
A request with a `guide` (structured output) gets its mask from `uip.llm.guided.Guides`,
built on the first such request from the checkpoint's tokenizer.

CUDA graphs (GPU, spec parameter `cuda_graphs`, default on): decode-only steps replay a graph
captured at start-up for their batch-size bucket (cuda_graphs.py), up to `graph_max_rows` rows;
a step with prefill chunks whose tokens all fit runs each token as a row of the same graphs
(its attention reads the cache up to that token); a lone new prompt replays a prefill graph
(prefill_graphs.py); bigger steps run the decode rows through their graph and the chunks
eagerly (steps counted by path: `EngineStats.steps_by_path`). Spec parameter `torch_compile`
(GPU, default on): each layer's elementwise ops (norms, residual adds, SiLU) run as kernels
fused by torch.compile (llama.py); in the graphs RoPE and the K/V cache write are one Triton
kernel. On CPU nothing changes.

Overlap: a step's tokens are chosen on the device and copied back asynchronously. While the
steps run as one decode graph each (decode rows, and new prompts' chunks as rows beside them;
no bad words, no logits mask), step N+1 is planned and launched before step N's tokens are
read back: each sequence gets a placeholder token whose id step N+1 takes from step N's
output on the GPU (a new prompt's rows keep their ids from the host); then step N's tokens
replace the placeholders and are delivered while step N+1 runs. A new prompt therefore joins
the running decodes without a pause of the device (with a token budget that leaves its chunk
room beside them: `max_batch_tokens` ~ running + a prompt, and requests arriving staggered,
a round of prompts never stalls every decode behind one big prefill). A sequence that
finished at step N computed one token too many in step N+1, into a slot of its own unhashed
last block: dropped. Otherwise step N's tokens are read back before the next step is planned.

LoRA (spec parameters `lora_dir`, `lora_max_rank`, `lora_max_adapters`; lora.py): a request's
`lora_name` is read from the adapter directory on enqueue (unknown or too large: InvalidInput)
unless resident, gets a device slot on admission (it waits while every slot is in use), and
its rows get their adapter's delta in the step's forward; its prefix-cache chain is salted
with the adapter. Decode steps with adapter rows replay CUDA graphs too (cuda_graphs.py).

Admission: at most `max_requests_per_batch` sequences run at once; at most
`max_waiting_requests` wait, beyond which `enqueue` raises `EngineOverloaded`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.llm import validation
from uip.llm.engine import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationResult,
)
from uip.llm.kv_blocks import BlockManager
from uip.llm.llama import LlamaRunner, eos_ids
from uip.llm.lora import Adapter, LoraCache
from uip.llm.lora_names import check_name
from uip.llm.paged_attention import build_meta, to_device
from uip.llm.paged_sampling import LogitsMask, Row, choose_on_device, new_generator
from uip.llm.scheduler import Scheduler, Sequence, StepPlan

if TYPE_CHECKING:
    from uip.core.settings import ModelSettings
    from uip.llm.cuda_graphs import DecodeGraphs
    from uip.llm.guided import Guides
    from uip.llm.prefill_graphs import PrefillGraphs

log = logging.getLogger("uip.llm.paged_runtime")


class EngineOverloaded(Unavailable):
    """Too many requests wait already; the client should retry later."""


@dataclass
class PagedEngineConfig:
    """The `torch` runtime's spec parameters (`llm_engine` in specs/llm.yaml)."""

    num_blocks: int | None = 64  # KV cache capacity in blocks of `page_size` tokens
    page_size: int = 64
    max_batch_tokens: int = 512  # tokens per step (longer prompts are chunked)
    max_requests_per_batch: int | None = None  # running sequences; None = 256
    max_waiting_requests: int = 1024
    kv_cache_memory_fraction: float | None = None  # GPU only, instead of num_blocks
    max_context: int | None = None  # prompt + output tokens; default: max_position_embeddings
    dtype: str = "auto"
    device: str = "cpu"
    prefix_caching: bool = True
    torch_threads: int = 0
    cuda_graphs: bool = True  # GPU only: decode-only steps replay captured CUDA graphs
    prefill_graph_tokens: int = 512  # GPU, with cuda_graphs: a lone prompt's first chunk up to
    # this many tokens replays a captured graph too (prefill_graphs.py); 0: eager
    graph_max_rows: int = 256  # GPU, with cuda_graphs: decode graphs up to this many rows, so a
    # step of new chunks beside the decodes runs as rows of one graph (capped at
    # max_batch_tokens; never below the running limit)
    torch_compile: bool = True  # GPU only: a layer's elementwise ops fused by torch.compile
    lora_dir: str | None = None  # LoRA adapters, one PEFT folder per name; None: no adapters
    lora_max_rank: int = 64
    lora_max_adapters: int = 8  # device slots (LRU); requests of more adapters wait for one

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> PagedEngineConfig:
        fraction = settings.param("kv_cache_memory_fraction", None, float)
        return cls(
            num_blocks=None if fraction else settings.param("num_blocks", 64, int),
            page_size=settings.param("page_size", 64, int),
            max_batch_tokens=settings.param("max_batch_tokens", 512, int),
            max_requests_per_batch=settings.param("max_requests_per_batch", None, int),
            max_waiting_requests=settings.param("max_waiting_requests", 1024, int),
            kv_cache_memory_fraction=fraction,
            max_context=int(settings.limits["max_context"]) if "max_context" in settings.limits
            else None,
            dtype=settings.param("dtype", "auto"),
            device=settings.device,
            prefix_caching=settings.param("prefix_caching", True, bool),
            torch_threads=settings.param("torch_threads", 0, int),
            cuda_graphs=settings.param("cuda_graphs", True, bool),
            prefill_graph_tokens=settings.param("prefill_graph_tokens", 512, int),
            graph_max_rows=settings.param("graph_max_rows", 256, int),
            torch_compile=settings.param("torch_compile", True, bool),
            lora_dir=settings.param("lora_dir", None) or None,
            lora_max_rank=settings.param("lora_max_rank", 64, int),
            lora_max_adapters=settings.param("lora_max_adapters", 8, int),
        )


@dataclass(eq=False)
class _Request:
    id: int
    request: GenerationRequest
    eos: frozenset[int]
    row: Row
    seq: Sequence
    logits_mask: LogitsMask | None = None
    results: queue.Queue = field(default_factory=queue.Queue)
    done: bool = False
    unresolved: bool = False  # seq.tokens ends with a placeholder (see Overlap above)

    @property
    def generated(self) -> list[int]:
        out = self.seq.generated
        return out[:-1] if self.unresolved else out

    @property
    def needs_host_tokens(self) -> bool:
        """Its next token's choice reads the tokens so far on the host: no overlap."""
        return self.logits_mask is not None or bool(self.row.bad_words)
    adapter: Adapter | None = None  # read from disk, until it is in a device slot
    lora_slot: int = 0  # 0: the base model

    def finish_reason(self, token: int) -> FinishReason | None:
        generated = self.seq.generated
        if token in self.eos:
            return "stop"
        if any(w and generated[-len(w):] == w for w in self.request.stop_words):
            return "stop"
        if len(generated) >= self.request.max_new_tokens:
            return "length"
        return None


@dataclass
class _Pending:
    """A launched step whose chosen tokens are still on their way to the host."""

    sampled: list[_Request]  # the rows that choose a token, in order
    tokens: torch.Tensor  # [len(sampled)] on the device
    host: torch.Tensor  # the same, copied asynchronously (pinned)
    event: torch.cuda.Event | None  # recorded after the copy (GPU only)


class PagedEngine(Engine):
    def __init__(self, model_dir: Path | str, config: PagedEngineConfig | None = None) -> None:
        self.config = cfg = config or PagedEngineConfig()
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.model_dir = Path(model_dir)
        self.runner = LlamaRunner(self.model_dir, cfg.dtype, cfg.device, cfg.max_context,
                                  compile_elementwise=cfg.torch_compile)
        self.vocab_size = self.runner.shape.vocab
        self.max_context = self.runner.max_context
        self.default_eos = eos_ids(self.model_dir, self.runner.config)
        num_blocks = self._num_blocks()
        self.block_size = cfg.page_size
        use_graphs = cfg.cuda_graphs and self.runner.device.type == "cuda"
        # one block more, the scratch block: graphs' padding rows write to it, and so does a
        # token whose K/V is already in a (shared, hashed) cached block
        self.cache = self.runner.allocate_cache(num_blocks + 1, cfg.page_size)
        self._scratch_slot = num_blocks * cfg.page_size
        self.blocks = BlockManager(num_blocks, cfg.page_size, cfg.prefix_caching)
        max_running = cfg.max_requests_per_batch or 256
        self.scheduler = Scheduler(self.blocks, cfg.max_batch_tokens, max_running)
        self.lora: LoraCache | None = None
        if cfg.lora_dir:
            from uip.core.paths import resolve_artifact

            self.lora = LoraCache(resolve_artifact(cfg.lora_dir), self.runner,
                                  cfg.lora_max_adapters, cfg.lora_max_rank)
        self._lora_waiting: list[_Request] = []  # admitted once a slot is free
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if use_graphs:
            self.graphs = self._capture_graphs(num_blocks, min(
                max(max_running, cfg.graph_max_rows), cfg.max_batch_tokens))
            self.prefill_graphs = self._capture_prefill_graphs(num_blocks)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._delivered = threading.Event()  # a result was queued (wakes `await_any`)
        self._requests: dict[int, _Request] = {}
        self._incoming: list[_Request] = []
        self._cancelled: list[_Request] = []
        self._stopping = False
        self._pending: _Pending | None = None  # the launched step whose tokens are not read
        self._failed: str | None = None
        self._tokens_generated = 0
        self._steps = 0
        # seconds spent in the engine thread per phase of a step (host view; for profiling):
        # schedule + inputs, forward launch (graph replay or eager), token choice (waits for
        # the GPU: the step's one sync), delivery of the results
        self.step_seconds = dict.fromkeys(("prepare", "launch", "choose", "deliver"), 0.0)
        self.steps_by_path: dict[str, int] = {}  # how each step ran (metric, benchmarks)
        self._guides: Guides | None = None
        self._guides_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="uip-paged-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> PagedEngine:
        return cls(settings.artifact_dir(), PagedEngineConfig.from_settings(settings))

    def _capture_graphs(self, scratch_block: int, max_batch: int) -> DecodeGraphs | None:
        from uip.llm import triton_paged_attention
        from uip.llm.cuda_graphs import DecodeGraphs, default_buckets

        if not triton_paged_attention.AVAILABLE:
            log.warning("cuda_graphs: the `triton` package is missing; decode runs eagerly")
            return None
        graphs = DecodeGraphs(self.runner, self.cache, self.block_size, scratch_block,
                              -(-self.max_context // self.block_size),
                              default_buckets(max_batch))
        with torch.inference_mode():
            graphs.capture()
        return graphs

    def _capture_prefill_graphs(self, scratch_block: int) -> PrefillGraphs | None:
        from uip.llm.prefill_graphs import PrefillGraphs, prefill_buckets

        buckets = prefill_buckets(min(self.config.prefill_graph_tokens,
                                      self.config.max_batch_tokens, self.max_context))
        if not buckets:
            return None
        graphs = PrefillGraphs(self.runner, self.cache, scratch_block * self.block_size, buckets)
        with torch.inference_mode():
            graphs.capture()
        return graphs

    def _num_blocks(self) -> int:
        cfg = self.config
        on_gpu = self.runner.device.type == "cuda"
        if cfg.kv_cache_memory_fraction is not None:
            if not on_gpu:
                raise ValueError("kv_cache_memory_fraction sizes the KV cache from GPU memory; "
                                 "on CPU set num_blocks (and page_size) instead")
            free, _ = torch.cuda.mem_get_info(self.runner.device)
            s = self.runner.shape
            per_block = (2 * s.layers * cfg.page_size * s.kv_heads * s.head_dim
                         * self.runner.cos.element_size())
            return max(1, int(free * cfg.kv_cache_memory_fraction // per_block))
        if cfg.num_blocks is None:
            raise ValueError("set num_blocks (or kv_cache_memory_fraction on a GPU): the KV "
                             "cache is never sized from host memory")
        return cfg.num_blocks

    # ------------------------------------------------------------------------- Engine API

    def validate(self, request: GenerationRequest):
        sampling = validation.check_generation(request, self.vocab_size, self.max_context,
                                               "the engine's max_context")
        need = self.blocks.blocks_for(len(request.input_ids) + request.max_new_tokens)
        if need > self.blocks.num_blocks:
            raise InvalidInput(
                f"prompt + max_new_tokens needs {need} KV cache blocks of {self.block_size} "
                f"tokens; the cache has {self.blocks.num_blocks}")
        return sampling

    def _adapter(self, name: str | None) -> Adapter | None:
        """The request's adapter read from disk, or None (base model, or resident already)."""
        if name is None:
            return None
        if self.lora is None:
            raise InvalidInput(f"lora_name {name!r} given, but this deployment serves no LoRA "
                               "adapters (no lora_dir parameter)")
        check_name(name)
        with self._lock:
            if self.lora.resident(name):
                return None
        return self.lora.read(name)

    def adapters(self) -> dict:
        """The adapter directory's folders and the adapters resident on the device."""
        if self.lora is None:
            return {"enabled": False, "available": [], "loaded": []}
        with self._lock:
            loaded = self.lora.status()
        return {"enabled": True, "directory": str(self.lora.directory),
                "max_adapters": self.lora.max_adapters, "max_rank": self.lora.max_rank,
                "available": self.lora.available(), "loaded": loaded}

    def load_adapter(self, name: str) -> None:
        """(Re)read an adapter from disk; it replaces the resident copy once that is idle."""
        if self.lora is None:
            raise InvalidInput("this deployment serves no LoRA adapters (no lora_dir parameter)")
        adapter = self.lora.read(check_name(name))
        with self._lock:
            self.lora.unload(name)
            slot = self.lora.acquire(name, adapter)
            if slot is not None:
                self.lora.release(slot)

    def unload_adapter(self, name: str) -> bool:
        if self.lora is None:
            return False
        with self._lock:
            return self.lora.unload(check_name(name))

    def guides(self) -> Guides:
        """Grammar compilation for this model's tokenizer (made on first use)."""
        with self._guides_lock:
            if self._guides is None:
                from uip.llm.guided import Guides

                self._guides = Guides.from_folder(self.model_dir, self.vocab_size,
                                                  sorted(self.default_eos))
            return self._guides

    def enqueue(self, request: GenerationRequest, logits_mask: LogitsMask | None = None) -> int:
        sampling = self.validate(request)
        adapter = self._adapter(request.lora_name)
        eos = frozenset([request.end_id]) if request.end_id is not None else self.default_eos
        if request.guide is not None and logits_mask is None:
            logits_mask = self.guides().mask(request.guide, sorted(eos))
        generator = None
        if sampling is not None:
            seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
            generator = new_generator(seed)
        with self._lock:
            if self._stopping or self._failed:
                raise RuntimeError(self._failed or "the engine is shutting down")
            waiting = len(self._incoming) + len(self.scheduler.waiting) + len(self._lora_waiting)
            if waiting >= self.config.max_waiting_requests:
                raise EngineOverloaded(
                    f"{waiting} requests are waiting already (max_waiting_requests="
                    f"{self.config.max_waiting_requests}); retry later")
            rid = next(self._ids)
            seq = Sequence(rid, list(request.input_ids), len(request.input_ids))
            row = Row(sampling, generator, [list(w) for w in request.bad_words if w],
                      seq.tokens)
            req = _Request(rid, request, eos, row, seq, logits_mask, adapter=adapter)
            seq.owner = req
            self._requests[rid] = req
            self._incoming.append(req)
            self._lock.notify()
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

    def await_any(self, timeout: float | None = None) -> list[GenerationResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._delivered.clear()  # before draining: a result queued meanwhile sets it again
            with self._lock:
                live = list(self._requests.values())
            out: list[GenerationResult] = []
            for req in live:
                while True:
                    try:
                        out.append(req.results.get_nowait())
                    except queue.Empty:
                        break
                if out and out[-1].request_id == req.id and out[-1].is_final:
                    with self._lock:
                        self._requests.pop(req.id, None)
            left = None if deadline is None else deadline - time.monotonic()
            if out or (left is not None and left <= 0):
                return out
            self._delivered.wait(left)

    def cancel(self, request_id: int) -> None:
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.done:
                return
            self._finish(req, [], "cancelled")
            self._cancelled.append(req)
            self._lock.notify()

    def stats(self) -> EngineStats:
        sched, blocks = self.scheduler, self.blocks
        return EngineStats(
            active_requests=len(sched.running),
            queued_requests=len(sched.waiting) + len(self._incoming) + len(self._lora_waiting),
            kv_blocks_used=blocks.num_used, kv_blocks_total=blocks.num_blocks,
            tokens_generated=self._tokens_generated,
            prefix_cache_queries=blocks.prefix_stats.queries,
            prefix_cache_hits=blocks.prefix_stats.hits,
            preemptions=sched.preemptions, steps_by_path=dict(self.steps_by_path))

    def shutdown(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            for req in list(self._requests.values()):
                if not req.done:
                    self._finish(req, [], "cancelled")
            self._lock.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._absorb():
                    if self.scheduler.has_work():
                        self._step()
                    elif self._pending is not None:
                        self._resolve()
        except Exception as e:  # noqa: BLE001 - report to every waiting client
            log.exception("the paged engine loop failed")
            self._fail_all(f"the generation loop stopped: {type(e).__name__}: {e}")

    def _absorb(self) -> bool:
        """Take new requests and cancels; wait while idle. False once stopping."""
        with self._lock:
            while not (self._incoming or self._cancelled or self._stopping
                       or self.scheduler.has_work() or self._pending is not None
                       or self._lora_waiting):
                self._lock.wait(timeout=0.5)
            if self._stopping:
                return False
            for req in self._cancelled:
                self.scheduler.remove(req.seq)
            self._cancelled.clear()
            incoming, self._incoming = self._lora_waiting + self._incoming, []
            self._lora_waiting = []
            for req in incoming:
                if not req.done and self._take_slot(req):
                    self.scheduler.add(req.seq)
            return True

    def _can_overlap(self) -> bool:
        """The next step may be planned before the pending step's tokens are read back."""
        sched = self.scheduler
        return (self.graphs is not None
                and len(sched.running) <= self.graphs.max_batch
                and not any(seq.owner.needs_host_tokens for seq in sched.running))

    def _take_slot(self, req: _Request) -> bool:
        """Put the request's adapter in a device slot (lock held); False: all are in use,
        it waits."""
        name = req.request.lora_name
        if name is None or self.lora is None:
            return True
        if not self.lora.resident(name) and req.adapter is None:
            try:  # unloaded since enqueue: read it again
                req.adapter = self.lora.read(name)
            except Exception as e:  # noqa: BLE001 - this request fails, not the engine
                self._finish(req, [], "error", error=str(e))
                return False
        slot = self.lora.acquire(name, req.adapter)
        if slot is None:
            self._lora_waiting.append(req)
            return False
        req.lora_slot, req.adapter = slot, None
        req.seq.table.salt = self.lora.fingerprints[slot]
        return True

    def _step(self) -> None:
        t0 = time.perf_counter()
        resolved = self._pending is not None and not self._can_overlap()
        if resolved:
            self._resolve()  # delivers: sequences may have finished
        plan = self.scheduler.schedule()
        pending = self._pending
        src: list[int] = []
        if pending is not None:
            src = self._follow_on_device(plan, pending)
            if not src:
                self._resolve()  # not a step that can follow on the device: the usual way
                plan.chunks = [c for c in plan.chunks if not c.seq.owner.done]
                pending, resolved = None, True
        if not plan.chunks:  # the last ones just finished; else never spin hot
            if not resolved:
                time.sleep(0.001)
            return
        ids, positions, slots, rows_out, lora_rows = [], [], [], [], []
        decode_tables, decode_lens, prefills = [], [], []
        bs = self.block_size
        as_rows = self._as_decode_rows(plan)
        for c in plan.chunks:
            seq, table = c.seq, c.seq.table.blocks
            span = range(c.start, c.start + c.length)
            if c.is_decode or as_rows:  # each token a decode row: its own context length
                decode_tables += [table] * c.length
                decode_lens += [p + 1 for p in span]
            else:
                prefills.append((len(ids), c.length, c.start + c.length, table))
            ids += seq.tokens[c.start:c.start + c.length]
            lora_rows += [seq.owner.lora_slot] * c.length
            positions += span
            hashed = len(seq.table.hashes) * bs  # positions below it are in cached blocks
            slots += [table[p // bs] * bs + p % bs if p >= hashed else self._scratch_slot
                      for p in span]
            if c.samples:
                rows_out.append(len(ids) - 1)
        t1 = time.perf_counter()
        self.step_seconds["prepare"] += t1 - t0
        if (self.graphs is not None and not prefills
                and len(ids) <= self.graphs.max_batch):
            path = "graph_mixed" if as_rows else "graph_decode"
            logits = self.graphs.run(ids, positions, slots, decode_tables, decode_lens,
                                     prev=None if pending is None else (pending.tokens, src),
                                     lora_slots=lora_rows)
            if len(rows_out) < len(ids):  # the rows of chunks that do not end a sequence
                logits = logits[to_device(rows_out, logits.device)]
        elif (self.graphs is not None and decode_tables
                and len(decode_tables) <= self.graphs.max_batch):
            # prefill chunks beside running decodes: the decode rows replay their graph and
            # the chunks run on their own (a lone prompt through its prefill graph), rather
            # than every row eagerly: one more pass over the weights, but no eager decode
            # attention and no host-bound eager launch for a small prompt
            n = len(decode_tables)
            decode = self.graphs.run(ids[:n], positions[:n], slots[:n], decode_tables,
                                     decode_lens, lora_slots=lora_rows[:n])
            path, chunks = self._prefill(
                ids[n:], positions[n:], slots[n:], lora_rows[n:],
                [(o - n, length, end, t) for o, length, end, t in prefills],
                [r - n for r in rows_out[n:]])
            logits = torch.cat([decode.float(), chunks.float()])
            path = "split_" + path
        else:
            path, logits = self._prefill(ids, positions, slots, lora_rows, prefills, rows_out,
                                         decode_tables, decode_lens)
        self.steps_by_path[path] = self.steps_by_path.get(path, 0) + 1
        self._steps += 1
        launched = self._choose(plan, logits)
        self.step_seconds["launch"] += time.perf_counter() - t1
        if pending is not None:
            self._resolve()  # step N's tokens, while this step runs
        self.scheduler.complete(plan)  # after the placeholders are resolved (block hashes)
        if launched is not None:
            with self._lock:  # `cancel` reads the tokens of a non-streaming request
                for req in launched.sampled:
                    if not req.done:  # finished at step N: its extra token is dropped
                        req.seq.tokens.append(0)  # placeholder: `_resolve` sets the id
                        req.unresolved = True
            self._pending = launched

    def _follow_on_device(self, plan: StepPlan, pending: _Pending) -> list[int]:
        """Each row's source in the pending step's tokens (-1: its id is known on the host),
        when the step can be launched before those tokens are read back: it runs as one
        graph (decode rows, and new prompts' chunks as rows beside them). [] otherwise."""
        if not plan.chunks or sum(c.length for c in plan.chunks) > self.graphs.max_batch:
            return []
        if not all(c.is_decode for c in plan.chunks) and not self._as_decode_rows(plan):
            return []
        rows = {id(req): i for i, req in enumerate(pending.sampled)}
        src: list[int] = []
        for c in plan.chunks:
            i = rows.get(id(c.seq.owner), -1)
            if i >= 0 and c.length != 1:  # its last token is the placeholder
                return []
            src += [i] * c.length
        return src

    def _as_decode_rows(self, plan: StepPlan) -> bool:
        """Run every token of this step as a row of a decode graph: prefill chunks (new
        prompts, with a cached prefix or not; recomputed sequences) beside the decodes, while
        all the step's tokens fit the largest graph. Attention per row reads the cache up to
        that row's position, which the graph's K/V write has filled for the whole chunk. A
        lone new prompt without adapter keeps its prefill graph."""
        g, chunks = self.graphs, plan.chunks
        if g is None or all(c.is_decode for c in chunks):
            return False
        if sum(c.length for c in chunks) > g.max_batch:
            return False
        c = chunks[0]
        return not (self.prefill_graphs is not None and len(chunks) == 1 and c.start == 0
                    and not c.seq.owner.lora_slot and self.prefill_graphs.fits(c.length))

    def _prefill(self, ids: list[int], positions: list[int], slots: list[int],
                 lora_rows: list[int], prefills: list, rows_out: list[int],
                 decode_tables: list | None = None, decode_lens: list | None = None
                 ) -> tuple[str, torch.Tensor]:
        """Prefill chunks (after any decode rows) -> (path, logits of `rows_out`): the first
        chunk of one prompt, alone and without adapter, replays its prefill graph; anything
        else runs eagerly."""
        if (self.prefill_graphs is not None and not decode_tables and not any(lora_rows)
                and len(prefills) == 1 and prefills[0][2] == prefills[0][1]  # no cached prefix
                and self.prefill_graphs.fits(len(ids))):
            return "graph_prefill", self.prefill_graphs.run(ids, slots)[:len(rows_out)]
        lora = self.lora.step(lora_rows) if self.lora is not None else None
        dev = self.runner.device
        meta = build_meta(slots, decode_tables or [], decode_lens or [], prefills,
                          self.block_size, dev)
        return "eager", self.runner.forward(to_device(ids, dev), to_device(positions, dev), meta,
                                            self.cache, to_device(rows_out, dev), lora)

    def _choose(self, plan: StepPlan, logits: torch.Tensor) -> _Pending | None:
        """Queue the token choice of the plan's sampling rows and its copy to the host."""
        rows, sampled = [], []
        for i, req in enumerate(c.seq.owner for c in plan.chunks if c.samples):
            if req.logits_mask is not None and not req.done:
                try:
                    req.row.allowed = req.logits_mask(req.generated)
                except Exception as e:  # noqa: BLE001 - the request fails, not the engine
                    log.exception("logits mask of request %s failed", req.id)
                    self._fail(req, f"the logits mask failed: {type(e).__name__}: {e}")
                    continue
            rows.append(i)
            sampled.append(req)
        if not sampled:
            return None
        if len(rows) < logits.shape[0]:
            logits = logits[rows]
        tokens = choose_on_device(logits, [req.row for req in sampled])
        event = None
        if tokens.is_cuda:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = tokens
        return _Pending(sampled, tokens, host, event)

    def _resolve(self) -> None:
        """Read the pending step's tokens back and deliver them."""
        p, self._pending = self._pending, None
        t0 = time.perf_counter()
        if p.event is not None:
            p.event.synchronize()
        tokens = p.host.tolist()
        t1 = time.perf_counter()
        self.step_seconds["choose"] += t1 - t0
        with self._lock:
            for req, token in zip(p.sampled, tokens, strict=True):
                if req.done:  # cancelled during the step: removed on the next one
                    continue
                req.seq.tokens[-1] = token
                req.unresolved = False
                self._tokens_generated += 1
                reason = req.finish_reason(token)
                if reason is not None:
                    self.scheduler.remove(req.seq)
                    self._finish(req, [token], reason)
                elif req.request.streaming:
                    req.results.put(GenerationResult(req.id, [token], is_final=False))
        self._delivered.set()
        self.step_seconds["deliver"] += time.perf_counter() - t1

    def _finish(self, req: _Request, new_tokens: list[int], reason: FinishReason,
                error: str | None = None) -> None:
        """Deliver the final result (lock held)."""
        req.done = True
        if req.lora_slot and self.lora is not None:
            # the slot keeps its adapter until the sequence leaves the batch: slots are only
            # rewritten in `_absorb`, after cancelled sequences are removed
            self.lora.release(req.lora_slot)
        tokens = new_tokens if req.request.streaming else req.generated
        req.results.put(GenerationResult(req.id, tokens, is_final=True, finish_reason=reason,
                                         error=error))
        self._delivered.set()

    def _fail(self, req: _Request, message: str) -> None:
        with self._lock:
            if not req.done:
                self._finish(req, [], "error", error=message)
                self._cancelled.append(req)  # its blocks are freed on the next step

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self._failed = message
            for req in list(self._requests.values()):
                if not req.done:
                    self._finish(req, [], "error", error=message)
