"""`engine_transport: local`: llm_bls holds the engine itself (co-located in its stub process).

What it saves against the default (`grpc`, llm_engine as a model of its own): per token, one
response send from llm_engine's stub to the server (an IPC round trip, serialized: one
sending thread per stub, see docs/benchmarks.md), the server's gRPC frontend, the loopback
stream and its parse in llm_bls's reader thread. The engine comes from llm_bls's own spec
entry: its `runtime` (torch or tensorrt_llm), artifact (the checkpoint, whose tokenizer llm_bls
uses too), parameters (num_blocks, max_batch_tokens, ...) and limits, as llm_engine reads them.
Its metrics are llm_engine's engine families (`uip.triton.engine_metrics`) under llm_bls's
name. `LocalEngineMux` has `GrpcEngineMux`'s interface, so llm_bls's one driver thread serves
both the same way: `submit`, `stop` (cancels the engine request, which then ends with its
final `cancelled` result), `finish`; one reader thread turns the engine's results
(`Engine.await_any`, merged per request) into `on_event(tid, EngineChunk | EngineStreamError)`.
`control` answers a LoRA control request (`uip lora --model llm_bls`) as llm_engine does
(`engine_admission.lora_control`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm import engine_tensors
from uip.llm.engine import GenerationResult
from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import EngineStreamError
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

READ_TIMEOUT_S = 0.05  # how long the reader waits for results before looking at `close`
METRICS_PERIOD_S = 0.1


class LocalEngineMux:
    def __init__(self, settings: ModelSettings,
                 on_event: Callable[[str, EngineChunk | EngineStreamError], None]):
        self.on_event = on_event
        self.name, self.runtime = settings.name, settings.runtime
        self.max_tokens = settings.limit("max_tokens", 1024)
        self.max_context = settings.limit("max_context", 2048)
        self.max_inflight = settings.limit("max_inflight", 512)
        self.engine = create_engine(settings)
        self._lock = threading.Lock()
        self._rids: dict[str, int] = {}  # Triton request id -> engine request id
        self._tids: dict[int, str] = {}
        self._closing = threading.Event()
        self._metrics = EngineMetrics(self.engine, {"model": settings.name,
                                                    "runtime": settings.runtime},
                                      METRICS_PERIOD_S, "uip-llm-bls")
        self._reader = threading.Thread(target=self._read, name="uip-llm-bls-engine",
                                        daemon=True)
        self._reader.start()

    def submit(self, tid: str, inputs: dict[str, np.ndarray]) -> None:
        try:
            request = engine_tensors.decode_request(inputs, self.max_tokens,
                                                    self.max_context).request
            compile_guide(self.engine, request)
            with self._lock:  # registered before the reader can see the first result
                if self._closing.is_set():
                    raise Unavailable("llm_bls is shutting down")
                rid = enqueue_within(self.engine, request, len(self._rids), self.max_inflight,
                                     self.name)
                self._rids[tid], self._tids[rid] = rid, tid
        except InvalidInput:
            raise
        except ValueError as exc:  # the engine refused the request (e.g. an unknown adapter)
            raise client_error(exc) from exc

    def control(self, control: dict) -> dict:
        """A LoRA control request (admin key, list / load / unload): the engine's adapters."""
        return lora_control(self.engine, control, self.name, self.runtime)

    def stop(self, tid: str, inputs: dict[str, np.ndarray] | None = None) -> None:
        with self._lock:
            rid = self._rids.get(tid)
        if rid is not None:
            self.engine.cancel(rid)

    def finish(self, tid: str) -> None:
        with self._lock:
            rid = self._rids.pop(tid, None)
            if rid is not None:
                self._tids.pop(rid, None)

    def check_engine(self) -> None:
        """Nothing to watch: the engine lives and dies with this stub."""

    def inflight(self) -> int:
        with self._lock:
            return len(self._rids)

    def _read(self) -> None:
        relay_results(self.engine, self._closing, READ_TIMEOUT_S, self._relay,
                      lambda exc: self._fail_all(f"the engine failed: {exc}"), "llm_bls")

    def _relay(self, result: GenerationResult) -> None:
        with self._lock:
            tid = self._tids.get(result.request_id)
        if tid is not None:
            self.on_event(tid, _item(result))

    def _fail_all(self, message: str) -> None:
        with self._lock:
            tids = list(self._rids)
        for tid in tids:
            self.on_event(tid, EngineStreamError(message, pb.triton_error(message,
                                                                          "UNAVAILABLE")))

    def close(self) -> None:
        self._closing.set()
        self._reader.join(timeout=2)
        self._metrics.close()
        self.engine.shutdown()


def _item(result: GenerationResult) -> EngineChunk | EngineStreamError:
    if result.error is not None:
        return EngineStreamError(f"engine: {result.error}")
    reason = (result.finish_reason or "stop") if result.is_final else None
    return EngineChunk(list(result.tokens), reason)
