"""`llm_engine` (decoupled): token ids in, token ids out, in-flight batching.

The tensor contract is TensorRT-LLM's `tensorrt_llm` model (see `uip.llm.engine_tensors`); the
runtime (`torch` or `tensorrt_llm`) comes from the spec. `execute` only validates and enqueues;
ONE dispatcher thread serves every in-flight request: it reads all results through
`Engine.await_any`, merges what a slow client has not taken yet (`coalesce`), sends one
response per result when streaming (exactly one, FINAL, otherwise), and polls every request's
`is_cancelled()`. So the stub's thread count does not grow with the number of streams. Spec
parameter `stream_interval` (default 1): after a stream's first token, a response waits until
it carries that many tokens (or is final); each response is an IPC round trip with the server,
so N tokens a response cost it 1/N of the responses. A request with `stop` true cancels the
in-flight requests that carry the same Triton request id (TensorRT-LLM's convention, which
llm_bls uses: BLS in Triton 2.51 cannot cancel its own request) and gets one empty final
response. A `lora_control` request (`uip lora`, checked against the admin key) lists, loads or
unloads the engine's LoRA adapters; its one final response holds the JSON answer in
`lora_status`.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from uip.core import hoptrace
from uip.core.gil import apply_switch_interval
from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm import engine_tensors
from uip.llm.engine import GenerationResult
from uip.triton import pb
from uip.triton.engine_admission import (
    client_error,
    compile_guide,
    enqueue_within,
    lora_control,
)
from uip.triton.engine_metrics import EngineMetrics
from uip.triton.engine_results import relay_results
from uip.triton.runtimes import create_engine

CANCEL_POLL_S = 0.05  # default of cancel_poll_s: how often the dispatcher asks which clients left
METRICS_PERIOD_S = 0.1
TPOT_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


@dataclass(eq=False)
class _Stream:
    """One in-flight request as the dispatcher sees it."""

    request: object
    sender: object
    tid: str  # Triton request id ('' when none)
    key: bytes | None  # stream_key to echo
    streaming: bool
    enqueued: float
    wanted: frozenset[str]  # the outputs the client asked for (empty: all)
    first: float | None = None  # when the first token went out
    tokens: int = 0
    cancel_sent: bool = False
    held: list[int] = field(default_factory=list)  # tokens held back by stream_interval


class LlmEngineModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        if not self.settings.decoupled:
            raise ValueError("llm_engine must be decoupled (model_transaction_policy)")
        apply_switch_interval(self.settings)
        self.poll_s = self.settings.positive("cancel_poll_s", CANCEL_POLL_S)
        self.stream_interval = self.settings.param("stream_interval", 1, int)
        if self.stream_interval < 1:
            raise ValueError(f"model '{self.settings.name}': parameter stream_interval must be "
                             f">= 1, got {self.stream_interval}")
        self.max_tokens = self.settings.limit("max_tokens", 1024)
        self.max_context = self.settings.limit("max_context", 2048)
        self.max_inflight = self.settings.limit("max_inflight", 512)
        self.engine = create_engine(self.settings)
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}  # engine request id -> stream
        self._inflight: dict[str, set[int]] = defaultdict(set)  # Triton request id -> engine ids
        self._closing = threading.Event()
        self._init_metrics()
        self._threads = [
            threading.Thread(target=self._dispatch, name="uip-llm-dispatch", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._engine_metrics = EngineMetrics(
            self.engine, {"model": self.settings.name, "runtime": self.settings.runtime},
            METRICS_PERIOD_S, "uip-llm")

    # ----------------------------------------------------------------------------- requests

    def execute(self, requests):
        for request in requests:
            self._start(request)
        return None

    def _start(self, request) -> None:
        arrived = time.monotonic()
        sender = request.get_response_sender()
        try:
            call = engine_tensors.decode_request(pb.inputs_of(request), self.max_tokens,
                                                 self.max_context)
            if call.stop:
                self._stop_by_id(request.request_id())
                pb.send(sender, engine_tensors.encode_response([], "cancelled"), final=True)
                return
            if call.control is not None:
                status = lora_control(self.engine, call.control, self.settings.name,
                                      self.settings.runtime)
                pb.send(sender, engine_tensors.encode_control_response(status), final=True)
                return
            tid = request.request_id()
            compile_guide(self.engine, call.request)
            with self._lock:  # registered before the dispatcher can see the first result
                rid = enqueue_within(self.engine, call.request, len(self._streams),
                                     self.max_inflight, self.settings.name)
                self._streams[rid] = _Stream(request, sender, tid, call.stream_key,
                                             call.request.streaming, time.monotonic(),
                                             frozenset(request.requested_output_names()))
                if tid:
                    self._inflight[tid].add(rid)
            hoptrace.mark(tid, "engine_execute", arrived)
            hoptrace.mark(tid, "engine_enqueued")
        except Exception as exc:  # noqa: BLE001 - becomes this request's error response
            sender.send(pb.error_response(client_error(exc)), flags=pb.final_flag())

    def _dispatch(self) -> None:
        """The one thread that relays every request's results and polls for cancels."""
        relay_results(self.engine, self._closing, self.poll_s, self._relay, self._fail_all,
                      "llm_engine", self._poll_cancels)

    def _relay(self, result: GenerationResult) -> None:
        with self._lock:
            stream = self._streams.get(result.request_id)
        if stream is None:  # e.g. its client went away and it was dropped
            return
        if result.error is None:  # stream_interval: after the first, N tokens a response
            tokens = stream.held + result.tokens
            if (stream.streaming and not result.is_final and stream.first is not None
                    and len(tokens) < self.stream_interval):
                stream.held = tokens
                return
            stream.held = []
            result = replace(result, tokens=tokens)
        try:
            if result.error is not None:
                stream.sender.send(pb.error_response(RuntimeError(result.error)),
                                   flags=pb.final_flag())
            else:
                reason = result.finish_reason if result.is_final else None
                outputs = engine_tensors.encode_response(result.tokens, reason, stream.key)
                if stream.wanted:  # build only the tensors the client reads (llm_bls: 2 of 3)
                    outputs = {k: v for k, v in outputs.items() if k in stream.wanted}
                hoptrace.first(stream.tid, "engine_result_first")
                pb.send(stream.sender, outputs, final=result.is_final)
                hoptrace.first(stream.tid, "engine_sent_first")
                if result.is_final:
                    hoptrace.mark(stream.tid, "engine_sent_final")
                self._observe(stream, result)
        except Exception:  # noqa: BLE001 - the client is gone: stop generating for it
            pb.log.exception("llm_engine: sending to request %s failed", result.request_id)
            self.engine.cancel(result.request_id)
            self._forget(result.request_id)
            return
        if result.is_final or result.error is not None:
            self._forget(result.request_id)

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            streams = list(self._streams.items())
        for rid, stream in streams:
            self.engine.cancel(rid)
            try:
                stream.sender.send(pb.error_response(exc), flags=pb.final_flag())
            except Exception:  # noqa: BLE001 - the response may be complete already
                pb.log.exception("llm_engine: could not send the error response")
            self._forget(rid)

    def _poll_cancels(self) -> None:
        with self._lock:
            streams = list(self._streams.items())
        for rid, stream in streams:
            if not stream.cancel_sent and stream.request.is_cancelled():
                stream.cancel_sent = True
                self.engine.cancel(rid)

    def _forget(self, rid: int) -> None:
        with self._lock:
            stream = self._streams.pop(rid, None)
            if stream is not None and stream.tid:
                ids = self._inflight.get(stream.tid)
                if ids is not None:
                    ids.discard(rid)
                    if not ids:
                        del self._inflight[stream.tid]

    def _stop_by_id(self, tid: str) -> None:
        if not tid:
            raise InvalidInput("a request with 'stop' true must carry the request id of the "
                               "request to stop")
        with self._lock:
            ids = list(self._inflight.get(tid, ()))
        for rid in ids:
            self.engine.cancel(rid)

    # ------------------------------------------------------------------------------ metrics

    def _init_metrics(self) -> None:
        labels = {"model": self.settings.name, "runtime": self.settings.runtime}
        family = pb.pb_utils.MetricFamily
        self._families: list = []

        def metric(name: str, description: str, kind, **kw):
            f = family(name=name, description=description, kind=kind)
            self._families.append(f)
            return f.Metric(labels=labels, **kw)

        histogram = family.HISTOGRAM
        self._ttft = metric("uip_llm_time_to_first_token_seconds",
                            "From enqueue to the first streamed token", histogram,
                            buckets=pb.TTFT_BUCKETS_S)
        self._e2e = metric("uip_llm_e2e_request_latency_seconds",
                           "From enqueue to the final response", histogram,
                           buckets=pb.E2E_BUCKETS_S)
        self._tpot = metric("uip_llm_time_per_output_token_seconds",
                            "Mean time between a streamed request's tokens after the first",
                            histogram, buckets=TPOT_BUCKETS_S)

    def _observe(self, stream: _Stream, result: GenerationResult) -> None:
        """Time to first token and per output token (streamed requests); end to end (all)."""
        now = time.monotonic()
        if result.is_final:
            self._e2e.observe(now - stream.enqueued)
        if not stream.streaming or not result.tokens:
            return
        if stream.first is None:
            stream.first = now
            self._ttft.observe(now - stream.enqueued)
        stream.tokens += len(result.tokens)
        if result.is_final and stream.tokens > 1:
            self._tpot.observe((now - stream.first) / (stream.tokens - 1))

    def finalize(self) -> None:
        self._closing.set()
        for t in self._threads:
            t.join(timeout=2)
        self._engine_metrics.close()
        self.engine.shutdown()
        self._ttft = self._tpot = self._e2e = None
        self._families = []
