"""`llm_engine` (decoupled): token ids in, token ids out, in-flight batching.

The tensor contract is TensorRT-LLM's `tensorrt_llm` model (see `uip.llm.engine_tensors`); the
runtime (`torch` or `tensorrt_llm`) comes from the spec. `execute` only validates and enqueues;
one thread per in-flight request relays the engine's results to its response sender (one
response per engine result when streaming, exactly one response carrying the FINAL flag
otherwise) and polls `request.is_cancelled()`. A request with `stop` true cancels the in-flight
requests that carry the same Triton request id (TensorRT-LLM's convention, which llm_bls
uses: BLS in Triton 2.51 cannot cancel its own request) and gets one empty final response.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm import engine_tensors
from uip.llm.engine import coalesce
from uip.triton import pb
from uip.triton.runtimes import create_engine

CANCEL_POLL_S = 0.05  # how often a request's loop asks Triton whether the client cancelled
METRICS_PERIOD_S = 0.1


class LlmEngineModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        if not self.settings.decoupled:
            raise ValueError("llm_engine must be decoupled (model_transaction_policy)")
        self.max_tokens = self.settings.limit("max_tokens", 1024)
        self.max_context = self.settings.limit("max_context", 2048)
        self.max_inflight = self.settings.limit("max_inflight", 512)
        self._active = 0  # requests between enqueue and their final response (under _lock)
        self.engine = create_engine(self.settings)
        self._lock = threading.Lock()
        self._inflight: dict[str, set[int]] = defaultdict(set)  # Triton request id -> engine ids
        self._closing = threading.Event()
        self._init_metrics()
        self._metrics_thread = threading.Thread(target=self._metrics_loop,
                                                name="uip-llm-metrics", daemon=True)
        self._metrics_thread.start()

    # ----------------------------------------------------------------------------- requests

    def execute(self, requests):
        for request in requests:
            self._start(request)
        return None

    def _start(self, request) -> None:
        sender = request.get_response_sender()
        try:
            call = engine_tensors.decode_request(pb.inputs_of(request), self.max_tokens,
                                                 self.max_context)
            if call.stop:
                self._stop_by_id(request.request_id())
                pb.send(sender, engine_tensors.encode_response([], "cancelled"), final=True)
                return
            with self._lock:
                if self._active >= self.max_inflight:
                    raise Unavailable(f"llm_engine has {self._active} requests in flight, its "
                                      "limit (limits.max_inflight)")
                self._active += 1
            try:
                rid = self.engine.enqueue(call.request)
            except BaseException:
                with self._lock:
                    self._active -= 1
                raise
        except Exception as exc:  # noqa: BLE001 - becomes this request's error response
            if isinstance(exc, ValueError) and not isinstance(exc, InvalidInput):
                exc = InvalidInput(str(exc))
            sender.send(pb.error_response(exc), flags=pb.final_flag())
            return
        tid = request.request_id()
        if tid:
            with self._lock:
                self._inflight[tid].add(rid)
        threading.Thread(target=self._relay, args=(request, sender, rid, tid, call.stream_key),
                         name=f"uip-llm-{rid}", daemon=True).start()

    def _relay(self, request, sender, rid: int, tid: str, key: bytes | None) -> None:
        """Send the engine's results for one request until its final one."""
        last_poll = 0.0
        try:
            while True:
                now = time.monotonic()
                if now - last_poll >= CANCEL_POLL_S:
                    last_poll = now
                    if request.is_cancelled():
                        self.engine.cancel(rid)
                for result in coalesce(self.engine.await_responses(rid, timeout=CANCEL_POLL_S)):
                    if result.error is not None:
                        sender.send(pb.error_response(RuntimeError(result.error)),
                                    flags=pb.final_flag())
                        return
                    reason = result.finish_reason if result.is_final else None
                    pb.send(sender, engine_tensors.encode_response(result.tokens, reason, key),
                            final=result.is_final)
                    if result.is_final:
                        return
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model lives on
            self.engine.cancel(rid)
            try:
                sender.send(pb.error_response(exc), flags=pb.final_flag())
            except Exception:  # noqa: BLE001 - the response may be complete already
                pb.log.exception("llm_engine: could not send the error response")
        finally:
            with self._lock:
                self._active -= 1
            if tid:
                with self._lock:
                    ids = self._inflight.get(tid)
                    if ids is not None:
                        ids.discard(rid)
                        if not ids:
                            del self._inflight[tid]

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
        self._families = [
            family(name="uip_llm_active_sequences",
                   description="Sequences in the in-flight batch (prefilling or decoding)",
                   kind=family.GAUGE),
            family(name="uip_llm_kv_blocks_used",
                   description="KV cache blocks held by live sequences",
                   kind=family.GAUGE),
            family(name="uip_llm_tokens_generated_total",
                   description="Output tokens generated by the engine",
                   kind=family.COUNTER),
        ]
        self._m_active, self._m_kv, self._m_tokens = (f.Metric(labels=labels)
                                                      for f in self._families)
        self._tokens_reported = 0

    def _update_metrics(self) -> None:
        s = self.engine.stats()
        self._m_active.set(float(s.active_requests))
        self._m_kv.set(float(s.kv_blocks_used))
        if s.tokens_generated > self._tokens_reported:
            self._m_tokens.increment(float(s.tokens_generated - self._tokens_reported))
            self._tokens_reported = s.tokens_generated

    def _metrics_loop(self) -> None:
        while not self._closing.wait(METRICS_PERIOD_S):
            try:
                self._update_metrics()
            except Exception:  # noqa: BLE001 - metrics must never take the model down
                pb.log.exception("llm_engine: metrics update failed")

    def finalize(self) -> None:
        self._closing.set()
        self._metrics_thread.join(timeout=2)
        self.engine.shutdown()
        self._m_active = self._m_kv = self._m_tokens = None
        self._families = []
