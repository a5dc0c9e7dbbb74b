"""`LocalEngineMux` (llm_bls's `engine_transport: local`) over a scripted engine: results by
Triton request id (merged per request), stop cancels the engine request, finish forgets it,
the in-flight limit and the engine's refusals are clear errors, a failing engine fails the
requests in flight as UNAVAILABLE, close shuts the engine down."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support import fake_pb_utils as pbu
from support.fake_pb_utils import wait_until
from test_triton_llm_engine import ScriptedEngine

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import EngineStreamError
from uip.triton import engine_local


def inputs(out_len: int = 4) -> dict[str, np.ndarray]:
    return {"input_ids": np.array([[1, 2, 3]], dtype=np.int32),
            "request_output_len": np.array([[out_len]], dtype=np.int32),
            "streaming": np.array([[True]])}


@pytest.fixture
def make(monkeypatch):
    muxes = []

    def make(engine, **limits):
        monkeypatch.setattr(engine_local, "create_engine", lambda settings: engine)
        events: list[tuple[str, object]] = []
        lock = threading.Lock()

        def on_event(tid, item):
            with lock:
                events.append((tid, item))

        settings = ModelSettings(name="llm_bls", runtime="torch",
                                 limits={k: str(v) for k, v in limits.items()})
        mux = engine_local.LocalEngineMux(settings, on_event)
        muxes.append(mux)
        return mux, events

    yield make
    for mux in muxes:
        mux.close()


def test_results_by_request_id_stop_and_finish(make):
    engine = ScriptedEngine([[[([5], False), ([6], False)], [([7], True, "length")]], []])
    mux, events = make(engine)
    mux.submit("a", inputs())
    mux.submit("b", inputs())
    assert engine.requests[0].input_ids == [1, 2, 3] and engine.requests[0].max_new_tokens == 4
    wait_until(lambda: ("a", EngineChunk([7], "length")) in events)
    assert events[0] == ("a", EngineChunk([5, 6], None))  # one batch: merged
    mux.stop("b", inputs())
    wait_until(lambda: ("b", EngineChunk([], "cancelled")) in events)
    assert engine.cancels == [1]
    assert mux.inflight() == 2
    mux.finish("a")
    mux.finish("b")
    assert mux.inflight() == 0
    mux.stop("a", inputs())  # finished: nothing to cancel
    assert engine.cancels == [1]


def test_limits_and_refusals_are_clear_errors(make):
    mux, _ = make(ScriptedEngine(), max_inflight=1, max_tokens=8)
    with pytest.raises(InvalidInput, match="request_output_len"):
        mux.submit("big", inputs(out_len=9))
    mux.submit("one", inputs())
    with pytest.raises(Unavailable, match="max_inflight"):
        mux.submit("two", inputs())
    refusing, _ = make(ScriptedEngine(enqueue_error=ValueError("unknown LoRA adapter 'x'")))
    with pytest.raises(InvalidInput, match="unknown LoRA adapter"):
        refusing.submit("x", inputs())


def test_a_failing_engine_fails_the_requests_in_flight_as_unavailable(make):
    engine = ScriptedEngine()
    mux, events = make(engine)
    mux.submit("a", inputs())
    engine.await_error = RuntimeError("CUDA error: an illegal memory access")
    wait_until(lambda: any(isinstance(item, EngineStreamError) for _, item in events))
    tid, err = next((t, i) for t, i in events if isinstance(i, EngineStreamError))
    assert tid == "a" and "illegal memory access" in str(err)
    assert err.error is not None and err.error.code() == pbu.TritonError.UNAVAILABLE


def test_close_shuts_the_engine_down(make):
    engine = ScriptedEngine()
    mux, _ = make(engine)
    mux.close()
    assert engine.shutdowns == 1
    with pytest.raises(Unavailable, match="shutting down"):
        mux.submit("late", inputs())


def test_control_answers_as_llm_engine_does(make, monkeypatch):
    """`uip lora --model llm_bls`: the admin key, list / load / unload, INVALID_ARG errors."""
    from test_triton_llm_engine import LoraEngine

    mux, _ = make(LoraEngine())
    monkeypatch.delenv("UIP_ADMIN_KEY", raising=False)
    with pytest.raises(InvalidInput, match="no admin key"):
        mux.control({"op": "list", "key": "k"})
    monkeypatch.setenv("UIP_ADMIN_KEY", "k")
    with pytest.raises(InvalidInput, match="admin key is missing or wrong"):
        mux.control({"op": "load", "name": "a", "key": "wrong"})
    assert mux.control({"op": "list", "key": "k"})["loaded"] == []
    assert mux.control({"op": "load", "name": "a", "key": "k"})["loaded"] == [{"name": "a"}]
    assert mux.control({"op": "unload", "name": "a", "key": "k"})["loaded"] == []
    with pytest.raises(InvalidInput, match="'a' is not loaded"):
        mux.control({"op": "unload", "name": "a", "key": "k"})
    class Refusing(LoraEngine):
        def load_adapter(self, name):
            raise ValueError(f"rank of {name} is above lora_max_rank")

    mux2, _ = make(Refusing())
    with pytest.raises(InvalidInput, match="rank of b"):
        mux2.control({"op": "load", "name": "b", "key": "k"})
    mux3, _ = make(ScriptedEngine([]))
    with pytest.raises(InvalidInput, match="torch runtime manages no LoRA adapters through "
                                           "llm_bls"):
        mux3.control({"op": "list", "key": "k"})
