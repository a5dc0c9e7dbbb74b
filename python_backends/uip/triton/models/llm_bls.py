"""`llm_bls` (Orchestrator, decoupled): the `llm` contract in one Python model over llm_engine.

The engine request is always streaming, so stop strings and cancellation act between engine
steps. A stop string or a client cancel stops the engine request at once through llm_engine's
`stop` input (same request id, TensorRT-LLM's convention). Each request's logic is a
`uip.llm.orchestrate.RequestRun` (per-request state; the tokenizer is shared read-only).

`engine_transport: grpc` (the default) reaches the engine through the server's own gRPC
endpoint (see `uip.triton.engine_streams` for why) with a bounded number of threads, whatever
the number of streams: `execute` only validates and hands each request to ONE driver thread,
which sends it on ONE shared gRPC stream (`GrpcEngineMux`, multiplexed by Triton request id),
advances every request's `RequestRun` as its engine responses arrive (responses queued for one
request are merged, so a slow client catches up in one step; final ones go first, since the
client's next request waits for them; requests that arrive meanwhile are sent to the engine
every `START_EVERY` deliveries, not after all of them), polls every client's
`is_cancelled()` every `cancel_poll_s`, and sends the client responses. Threads: the stub's
own, the driver, the mux's reader and gRPC's own (a fixed set; see `engine_streams`).

`engine_transport: local` holds the engine in this stub (`uip.triton.engine_local`: the
spec's runtime, checkpoint and engine parameters on llm_bls itself); the same driver serves it,
without the hop through the server. There llm_bls also answers llm_engine's LoRA control
request (`lora_control` beside an empty `text_input`, rendered only for this transport; `uip
lora --model llm_bls`), in `execute`, with one final `lora_status` response.

`engine_transport: bls` uses a decoupled BLS call per request on a thread of its own (today's
path, `orchestrate.run` over `BlsEngineStream`); Triton 2.51's stub makes it unsafe with
several requests in flight, so it is not bounded and not the default.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from uip.core import hoptrace
from uip.core.gil import apply_switch_interval
from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm import engine_tensors
from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import (
    ClientResponse,
    EngineStreamError,
    RequestRun,
    TextPipeline,
    client_outputs,
    run,
)
from uip.llm.preprocess import Limits, LlmRequest, Preprocessor, model_max_positions
from uip.llm.tokenizer import tokenizer_for
from uip.triton import pb
from uip.triton.engine_local import LocalEngineMux
from uip.triton.engine_streams import BlsEngineStream, GrpcEngineMux, engine_url

DRAIN_S = 30.0  # how long a stopped engine request may take to confirm its end
# deliveries between two looks for new requests: each one's send waits for the server
# (~0.3 ms on the H200), so a start waits for ~8 of them, not for all 64 streams' (~20 ms)
START_EVERY = 8


def _error_response(exc: Exception):
    """The client's error: llm_engine's own error (its code kept, but a dead or reloading engine
    is UNAVAILABLE, never INVALID_ARG: see uip.triton.engine_streams) or ours."""
    if isinstance(exc, EngineStreamError) and exc.error is not None:
        return pb.pb_utils.InferenceResponse(output_tensors=[], error=exc.error)
    return pb.error_response(exc)


def _request_id() -> str:
    return f"llm_bls-{uuid.uuid4().hex}"


@dataclass(eq=False)
class _Active:
    """One in-flight request as the driver sees it."""

    sender: object
    run: RequestRun


class LlmBlsModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        if not self.settings.decoupled:
            raise ValueError("llm_bls must be decoupled (model_transaction_policy)")
        apply_switch_interval(self.settings)
        folder = self.settings.artifact_dir()
        self.tokenizer = tokenizer_for(self.settings)
        self.pre = Preprocessor(self.tokenizer,
                                Limits.from_settings(self.settings, model_max_positions(folder)))
        self.engine_model = self.settings.param("engine_model", "llm_engine")
        self.poll_s = self.settings.positive("cancel_poll_s", 0.05)
        self.drain_s = DRAIN_S
        self.transport = self.settings.param("engine_transport", "grpc")
        if self.transport not in ("grpc", "bls", "local"):
            raise ValueError(f"llm_bls: engine_transport must be grpc, local or bls, not "
                             f"{self.transport!r}")
        self.engine_url = engine_url(self.settings.param("engine_url", ""))
        # ("start", ...), ("reply", sender, answer) and ("engine", tid, item)
        self._events: queue.Queue = queue.Queue()
        self._active: dict[str, _Active] = {}  # Triton request id -> request (driver only)
        self._closing = threading.Event()
        family = pb.pb_utils.MetricFamily
        self._ttfr_family = family(
            name="uip_llm_bls_time_to_first_response_seconds", kind=family.HISTOGRAM,
            description="From llm_bls receiving a request to its first response with text "
            "(the engine's own share: uip_llm_time_to_first_token_seconds)")
        self._e2e_family = family(
            name="uip_llm_bls_e2e_request_latency_seconds", kind=family.HISTOGRAM,
            description="From llm_bls receiving a request to its final response")
        labels = {"model": self.settings.name}
        self._ttfr = self._ttfr_family.Metric(labels=labels, buckets=pb.TTFT_BUCKETS_S)
        self._e2e = self._e2e_family.Metric(labels=labels, buckets=pb.E2E_BUCKETS_S)
        self.mux: GrpcEngineMux | LocalEngineMux | None = None
        self._driver: threading.Thread | None = None
        if self.transport == "local":
            self.mux = LocalEngineMux(self.settings, self._on_engine)
        elif self.transport == "grpc":
            self.mux = GrpcEngineMux(self.engine_url, self.engine_model, self._on_engine)
        if self.mux is not None:
            self._driver = threading.Thread(target=self._drive, name="uip-llm-bls-driver",
                                            daemon=True)
            self._driver.start()

    def _engine(self, inputs) -> BlsEngineStream:
        return BlsEngineStream(self.engine_model, inputs, _request_id())

    def execute(self, requests):
        # Parse in this (the stub's main) thread; the driver (or, over BLS, a thread per
        # request) serves each valid request.
        for request in requests:
            arrived = time.monotonic()
            sender = request.get_response_sender()
            try:
                given = pb.inputs_of(request)
                control = engine_tensors.decode_control(given)
                if control is not None:
                    self._reply(sender,
                                engine_tensors.encode_control_status(self._control(control)))
                    continue
                req = self.pre.parse(given)
                inputs = self.pre.engine_inputs(req, streaming=True, stop_words=False)
            except Exception as exc:  # noqa: BLE001 - becomes this request's error
                self._reply(sender, exc)
                continue
            if self.mux is None:
                threading.Thread(target=self._serve, args=(sender, req, inputs, arrived),
                                 daemon=True, name="uip-llm-bls").start()
            else:
                self._events.put(("start", sender, req, inputs, arrived))
        return None

    def _reply(self, sender, answer: dict | Exception) -> None:
        """A request's one final response (outputs, or its error). With a driver, the driver
        sends it: Triton 2.51's server does not survive sends from several stub threads at
        once (docs/benchmarks.md, eighth session)."""
        if self._driver is not None:
            self._events.put(("reply", sender, answer))
        else:
            _send_final(sender, answer)

    def _control(self, control: dict) -> dict:
        """A LoRA control request: the engine's answer when this stub holds it."""
        if not isinstance(self.mux, LocalEngineMux):
            raise InvalidInput(f"llm_bls holds no engine (engine_transport {self.transport}): "
                               f"send LoRA control requests to {self.engine_model}")
        return self.mux.control(control)

    # ---------------------------------------------------------- grpc: the one driver thread

    def _on_engine(self, tid: str, item: EngineChunk | EngineStreamError) -> None:
        """The mux's reader thread: hand the response to the driver."""
        if hoptrace.trace is not None:  # profiling only: this runs for every engine response
            hoptrace.first(tid, "bls_read_first")
            if getattr(item, "final", False):
                hoptrace.mark(tid, "bls_read_final")
        self._events.put(("engine", tid, item))

    def _drive(self) -> None:
        last_poll = 0.0
        carry: list[tuple] = []  # engine events taken while looking for starts
        while not self._closing.is_set():
            batch, carry = carry, []
            try:
                if not batch:
                    batch.append(self._events.get(timeout=self.poll_s))
                while True:
                    batch.append(self._events.get_nowait())
            except queue.Empty:
                pass
            try:
                carry = self._handle(batch)
                now = time.monotonic()
                if now - last_poll >= self.poll_s:
                    last_poll = now
                    self._poll(now)
            except Exception:  # noqa: BLE001 - the driver must outlive any one request's bug
                pb.log.exception("llm_bls: the driver failed a step")

    def _handle(self, batch: list[tuple]) -> list[tuple]:
        """Starts, then each request's queued engine responses merged into one chunk, final
        ones first; every START_EVERY deliveries the requests that arrived meanwhile start.
        Returns the engine events taken while looking for them (the next batch's first)."""
        pending: dict[str, EngineChunk] = {}
        for event in batch:
            if event[0] == "start":
                self._start(*event[1:])
                continue
            if event[0] == "reply":
                _send_final(*event[1:])
                continue
            _, tid, item = event
            if isinstance(item, EngineChunk):
                prev = pending.get(tid)
                if prev is None:
                    pending[tid] = item
                elif not prev.final:  # after its final chunk nothing counts
                    pending[tid] = EngineChunk(prev.tokens + item.tokens, item.finish_reason)
            else:  # an error: what came before it first
                if tid in pending:
                    self._deliver(tid, pending.pop(tid))
                self._deliver(tid, item)
        later: list[tuple] = []
        for k, tid in enumerate(sorted(pending, key=lambda t: not pending[t].final)):
            self._deliver(tid, pending[tid])
            if k % START_EVERY == START_EVERY - 1:
                later.extend(self._take_starts())
        return later

    def _take_starts(self) -> list[tuple]:
        """Start the requests queued now; the other events queued, in order, for later."""
        other = []
        try:
            while True:
                event = self._events.get_nowait()
                if event[0] == "start":
                    self._start(*event[1:])
                elif event[0] == "reply":
                    _send_final(*event[1:])
                else:
                    other.append(event)
        except queue.Empty:
            return other

    def _sender(self, sender, req: LlmRequest, arrived: float, tid: str = ""):
        """`send` for one request's client responses; times its first one with text and its
        final one (the hop trace follows the grpc transport only: `tid` '' over BLS)."""
        first = True

        def send(resp: ClientResponse) -> None:
            nonlocal first
            pb.send(sender, client_outputs(resp, req), final=resp.final)
            if first and resp.text:
                first = False
                self._ttfr.observe(time.monotonic() - arrived)
                hoptrace.mark(tid, "bls_sent_first")
            if resp.final:
                self._e2e.observe(time.monotonic() - arrived)
                hoptrace.mark(tid, "bls_sent_final")
        return send

    def _start(self, sender, req: LlmRequest, inputs: dict[str, np.ndarray],
               arrived: float) -> None:
        tid = _request_id()
        hoptrace.mark(tid, "bls_execute", arrived)
        send = self._sender(sender, req, arrived, tid)

        def stop() -> None:
            self.mux.stop(tid, inputs)

        active = None
        try:
            active = _Active(sender, RequestRun(TextPipeline(self.tokenizer, req), send, stop,
                                                drain_s=self.drain_s))
            self._active[tid] = active
            self.mux.submit(tid, inputs)
            hoptrace.mark(tid, "bls_submit")
        except Exception as exc:  # noqa: BLE001 - the client gets the error
            if active is not None:
                active.run.engine_ended = True  # it never reached the engine
            self._fail(tid, active, sender, exc)

    def _deliver(self, tid: str, item: EngineChunk | EngineStreamError) -> None:
        active = self._active.get(tid)
        if active is None:  # over already (e.g. the stop request's own final response)
            return
        try:
            if isinstance(item, EngineStreamError):
                active.run.on_error(item, time.monotonic())
            else:
                hoptrace.first(tid, "bls_deliver_first")
                active.run.on_chunk(item, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model lives on
            self._fail(tid, active, active.sender, exc)
            return
        if active.run.finished:
            self._forget(tid)

    def _poll(self, now: float) -> None:
        """Every client's cancel, the stopped requests' drain deadlines, and whether the
        engine's stub died under the requests in flight."""
        if self.mux is not None:
            self.mux.check_engine()
        for tid, active in list(self._active.items()):
            try:
                if active.run.running and active.sender.is_cancelled():
                    active.run.on_cancel(now)
                active.run.on_tick(now)
            except Exception as exc:  # noqa: BLE001 - e.g. the stop could not be sent
                self._fail(tid, active, active.sender, exc)
                continue
            if active.run.finished:
                self._forget(tid)

    def _fail(self, tid: str, active: _Active | None, sender, exc: Exception) -> None:
        """As `_serve` does: stop the engine request if it runs, report unless done."""
        if active is not None:
            try:
                active.run.abandon()
            except Exception:  # noqa: BLE001 - report the first failure, not this
                pb.log.exception("llm_bls: could not stop the engine request")
        if active is None or not active.run.client_done:
            try:
                sender.send(_error_response(exc), flags=pb.final_flag())
            except Exception:  # noqa: BLE001 - e.g. the client is gone
                pb.log.exception("llm_bls: could not send the error response")
        self._forget(tid)

    def _forget(self, tid: str) -> None:
        self._active.pop(tid, None)
        if self.mux is not None:
            self.mux.finish(tid)

    # --------------------------------------------------- bls: one thread per request (as before)

    def _serve(self, sender, req, inputs, arrived: float) -> None:
        done = False
        client_send = self._sender(sender, req, arrived)

        def send(resp: ClientResponse) -> None:
            nonlocal done
            done = done or resp.final
            client_send(resp)

        engine = self._engine(inputs)
        try:
            try:
                run(TextPipeline(self.tokenizer, req), engine, send, sender.is_cancelled,
                    poll_s=self.poll_s, drain_s=self.drain_s)
            except BaseException:
                if not engine.ended:
                    try:
                        engine.stop()
                    except Exception:  # noqa: BLE001 - report the first failure, not this
                        pb.log.exception("llm_bls: could not stop the engine request")
                raise
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model lives on
            if not done:
                try:
                    sender.send(_error_response(exc), flags=pb.final_flag())
                except Exception:  # noqa: BLE001 - e.g. the client is gone
                    pb.log.exception("llm_bls: could not send the error response")
        finally:
            engine.close()

    def finalize(self) -> None:
        self._closing.set()
        if self._driver is not None:
            self._driver.join(timeout=2)
        if self.mux is not None:
            self.mux.close()
        if self._driver is None or not self._driver.is_alive():
            for tid, active in list(self._active.items()):
                self._fail(tid, active, active.sender, RuntimeError("llm_bls is shutting down"))
        self.pre = None
        self._ttfr = self._e2e = self._ttfr_family = self._e2e_family = None


def _send_final(sender, answer: dict | Exception) -> None:
    try:
        if isinstance(answer, Exception):
            sender.send(pb.error_response(answer), flags=pb.final_flag())
        else:
            pb.send(sender, answer, final=True)
    except Exception:  # noqa: BLE001 - the client is gone; the driver goes on
        pb.log.exception("llm_bls: sending a final response failed")
