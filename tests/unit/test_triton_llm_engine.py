"""The llm_engine adapter with a scripted Engine: error codes and FINAL flags, streaming
responses per (coalesced) result, stop-by-request-id, client cancel, metrics, finalize."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from support import fake_pb_utils as pbu
from support.fake_pb_utils import finished, only_error, wait_until

from uip.llm.engine import Engine, EngineStats, GenerationRequest, GenerationResult
from uip.triton.models import llm_engine
from uip.triton.models.llm_engine import LlmEngineModel

FINAL = pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class ScriptedEngine(Engine):
    """Each enqueued request gets the next script: a list of batches, one batch per
    `await_responses` call (so several results in one batch test coalescing). A request whose
    script runs out waits until `cancel`, which ends it with a final 'cancelled' result."""

    def __init__(self, scripts=None, enqueue_error: Exception | None = None,
                 await_error: Exception | None = None):
        self.scripts = list(scripts or [])
        self.enqueue_error = enqueue_error
        self.await_error = await_error
        self.requests: dict[int, GenerationRequest] = {}
        self.batches: dict[int, list[list[GenerationResult]]] = {}
        self.cancels: list[int] = []
        self.shutdowns = 0
        self.stats_value = EngineStats(0, 0, 0, 0, 0)
        self._cv = threading.Condition()
        self._next = 0

    def enqueue(self, request):
        if self.enqueue_error is not None:
            raise self.enqueue_error
        with self._cv:
            rid, self._next = self._next, self._next + 1
            self.requests[rid] = request
            script = self.scripts.pop(0) if self.scripts else []
            self.batches[rid] = [[GenerationResult(rid, *r) for r in batch] for batch in script]
        return rid

    def await_responses(self, request_id, timeout=None):
        if self.await_error is not None:
            raise self.await_error
        with self._cv:
            if not self.batches[request_id]:
                self._cv.wait(timeout)
            return self.batches[request_id].pop(0) if self.batches[request_id] else []

    def await_any(self, timeout=None):
        """The next batch of whichever request has one (the dispatcher's read)."""
        if self.await_error is not None:
            raise self.await_error
        with self._cv:
            if not any(self.batches.values()):
                self._cv.wait(timeout)
            for batch in self.batches.values():
                if batch:
                    return batch.pop(0)
            return []

    def cancel(self, request_id):
        with self._cv:
            if request_id not in self.cancels:  # a cancelled request ends once
                self.batches[request_id].append(
                    [GenerationResult(request_id, [], True, "cancelled")])
            self.cancels.append(request_id)
            self._cv.notify_all()

    def stats(self):
        return self.stats_value

    def shutdown(self):
        self.shutdowns += 1


def engine_config(name="llm_engine", decoupled=True, max_tokens=16, **params):
    """The model_config JSON Triton hands to `initialize` (what the spec renders)."""
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 64,
        "parameters": {
            "runtime": {"string_value": "torch"},
            "limits.max_tokens": {"string_value": str(max_tokens)},
            "limits.max_context": {"string_value": "64"},
            **{k: {"string_value": str(v)} for k, v in params.items()},
        },
        "model_transaction_policy": {"decoupled": decoupled},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }


@pytest.fixture
def make(monkeypatch):
    """make(engine, **config) -> an initialized LlmEngineModel over that engine."""
    models, seen = [], []

    def build(engine: Engine, **config):
        def create_engine(settings):
            seen.append(settings)
            return engine

        monkeypatch.setattr(llm_engine, "create_engine", create_engine)
        model = LlmEngineModel()
        model.initialize(pbu.model_args(engine_config(**config)))
        models.append(model)
        return model

    build.settings = seen
    yield build
    for m in models:
        if m._families:  # not finalized by the test
            m.finalize()


def gen_request(ids=(1, 2, 3), out_len=4, request_id="", streaming=None, **extra):
    inputs = {"input_ids": np.array([list(ids)], dtype=np.int32),
              "request_output_len": np.array([[out_len]], dtype=np.int32)}
    if streaming is not None:
        inputs["streaming"] = np.array([[streaming]], dtype=bool)
    inputs.update(extra)
    return pbu.Request(inputs, request_id=request_id)


def stop_request(request_id=""):
    return pbu.Request({"input_ids": np.array([[1]], dtype=np.int32),
                        "request_output_len": np.array([[1]], dtype=np.int32),
                        "stop": np.array([[True]], dtype=bool)}, request_id=request_id)





def data(sent):
    """(tokens, finish_reason, flags) per response."""
    out = []
    for resp, flags in sent:
        assert not resp.has_error()
        o = resp.outputs()
        assert o["output_ids"].shape[:2] == (1, 1)
        assert o["sequence_length"].tolist() == [[o["output_ids"].shape[2]]]
        out.append((o["output_ids"].reshape(-1).tolist(), o["finish_reason"][0, 0].decode(),
                    flags))
    return out


# --- initialize ----------------------------------------------------------------------------


def test_initialize_reads_the_spec_and_creates_the_engine(make):
    model = make(ScriptedEngine())
    (settings,) = make.settings
    assert settings.runtime == "torch" and settings.name == "llm_engine" and settings.decoupled
    assert model.max_tokens == 16 and model.max_context == 64


def test_initialize_refuses_a_model_that_is_not_decoupled(make):
    with pytest.raises(ValueError, match="decoupled"):
        make(ScriptedEngine(), decoupled=False)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs, message", [
    ({"request_output_len": np.array([[4]], dtype=np.int32)}, "input 'input_ids' is required"),
    ({"input_ids": np.array([[1, 2]], dtype=np.int32)}, "'request_output_len' is required"),
    ({"input_ids": np.array([[1]], dtype=np.int32),
      "request_output_len": np.array([[17]], dtype=np.int32)}, "17"),  # > limits.max_tokens
    ({"input_ids": np.array([[1], [2]], dtype=np.int32),
      "request_output_len": np.array([[4], [4]], dtype=np.int32)}, "batch size 1"),
])
def test_bad_input_is_one_final_invalid_arg_response(make, inputs, message):
    engine = ScriptedEngine()
    model = make(engine)
    request = pbu.Request(inputs)
    assert model.execute([request]) is None
    err = only_error(request)
    assert err.code() == pbu.TritonError.INVALID_ARG
    assert message in err.message()
    assert engine.requests == {}


def test_engine_value_error_is_invalid_arg(make):
    model = make(ScriptedEngine(enqueue_error=ValueError("prompt too long for the KV cache")))
    request = gen_request()
    model.execute([request])
    err = only_error(request)
    assert err.code() == pbu.TritonError.INVALID_ARG
    assert err.message() == "prompt too long for the KV cache"


def test_engine_runtime_error_is_internal(make):
    model = make(ScriptedEngine(enqueue_error=RuntimeError("CUDA out of memory")))
    request = gen_request()
    model.execute([request])
    err = only_error(request)
    assert err.code() == pbu.TritonError.INTERNAL
    assert err.message() == "RuntimeError: CUDA out of memory"


def test_failed_engine_result_is_internal_and_ends_the_request(make):
    script = [[([5], False)], [([], True, "error", "sequence evicted")]]
    engine = ScriptedEngine([script])
    model = make(engine)
    request = gen_request(streaming=True)
    model.execute([request])
    sent = finished(request)
    assert len(sent) == 2
    assert data(sent[:1]) == [([5], "", 0)]
    resp, flags = sent[1]
    assert flags == FINAL
    assert resp.error().code() == pbu.TritonError.INTERNAL
    assert resp.error().message() == "RuntimeError: sequence evicted"


def test_await_failure_is_internal_and_cancels_the_engine_request(make):
    engine = ScriptedEngine(await_error=RuntimeError("executor gone"))
    model = make(engine)
    request = gen_request()
    model.execute([request])
    err = only_error(request)
    assert err.code() == pbu.TritonError.INTERNAL and err.message() == "RuntimeError: executor gone"
    assert engine.cancels == [0]


def test_one_bad_request_does_not_fail_the_others(make):
    engine = ScriptedEngine([[[([1, 2], True, "length")]]])
    model = make(engine)
    bad, good = pbu.Request({}), gen_request(out_len=2)
    model.execute([bad, good])
    assert only_error(bad).code() == pbu.TritonError.INVALID_ARG
    assert data(finished(good)) == [([1, 2], "length", FINAL)]


# --- results ---------------------------------------------------------------------------------


def test_streaming_sends_one_response_per_coalesced_result_only_the_last_final(make):
    script = [
        [([7], False)],
        [([8], False), ([9], False)],  # ready together: one response
        [([10], False), ([11], True, "length")],  # merged into the final one
    ]
    engine = ScriptedEngine([script])
    model = make(engine)
    request = gen_request(ids=(4, 5), out_len=5, streaming=True)
    model.execute([request])
    assert data(finished(request)) == [([7], "", 0), ([8, 9], "", 0), ([10, 11], "length", FINAL)]
    req = engine.requests[0]
    assert req.input_ids == [4, 5] and req.max_new_tokens == 5 and req.streaming


def test_stream_interval_sends_the_first_token_then_n_at_a_time(make):
    script = [[([k], k == 6, "length" if k == 6 else None)] for k in range(7)]
    engine = ScriptedEngine([script])
    model = make(engine, stream_interval=3)
    request = gen_request(out_len=7, streaming=True)
    model.execute([request])
    assert data(finished(request)) == [([0], "", 0), ([1, 2, 3], "", 0), ([4, 5, 6], "length",
                                                                           FINAL)]


def test_stream_interval_must_be_at_least_one(make):
    with pytest.raises(ValueError, match="stream_interval must be >= 1"):
        make(ScriptedEngine(), stream_interval=0)


def test_not_streaming_sends_exactly_one_final_response(make):
    engine = ScriptedEngine([[[([3, 4, 2], True, "stop")]]])
    model = make(engine)
    request = gen_request(out_len=3, end_id=np.array([[2]], dtype=np.int32))
    model.execute([request])
    assert data(finished(request)) == [([3, 4, 2], "stop", FINAL)]
    assert engine.requests[0].end_id == 2 and not engine.requests[0].streaming


def test_every_response_echoes_the_stream_key(make):
    engine = ScriptedEngine([[[([1], False)], [([2], True, "length")]]])
    model = make(engine)
    request = gen_request(streaming=True, stream_key=np.array([[b"key-1"]], dtype=object))
    model.execute([request])
    sent = finished(request)
    assert [r.outputs()["stream_key_out"].tolist() for r, _ in sent] == [[[b"key-1"]]] * 2


def test_responses_hold_only_the_outputs_the_client_asked_for(make):
    engine = ScriptedEngine([[[([1], False)], [([2], True, "length")]]] * 2)
    model = make(engine)
    asked = gen_request(streaming=True)
    asked._requested = ["output_ids", "finish_reason"]  # as llm_bls asks
    everything = gen_request(streaming=True)  # names none: all outputs
    model.execute([asked])
    got = finished(asked)
    model.execute([everything])
    assert [sorted(r.outputs()) for r, _ in got] == [["finish_reason", "output_ids"]] * 2
    assert [r.outputs()["output_ids"].reshape(-1).tolist() for r, _ in got] == [[1], [2]]
    assert data(finished(everything)) == [([1], "", 0),
                                          ([2], "length", pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL)]


# --- stop and cancel -------------------------------------------------------------------------


def test_stop_cancels_the_requests_with_that_id_and_answers_cancelled(make):
    engine = ScriptedEngine([[[([1], False)]], [[([1], False)]], [[([1], False)]]])
    model = make(engine)
    a1, a2 = gen_request(request_id="a", streaming=True), gen_request(request_id="a",
                                                                      streaming=True)
    other = gen_request(request_id="b", streaming=True)
    model.execute([a1, a2, other])
    wait_until(lambda: all(len(r.sender.sent) == 1 for r in (a1, a2, other)))  # in flight

    stop = stop_request("a")
    model.execute([stop])
    assert data(finished(stop)) == [([], "cancelled", FINAL)]
    assert sorted(engine.cancels) == [0, 1]  # both requests carrying "a", not "b"
    for r in (a1, a2):
        assert data(finished(r))[-1] == ([], "cancelled", FINAL)
    assert not other.sender.finished

    model.execute([stop_request("b")])
    assert data(finished(other))[-1] == ([], "cancelled", FINAL)
    assert sorted(engine.cancels) == [0, 1, 2]


def test_stop_for_an_id_not_in_flight_still_answers_cancelled(make):
    engine = ScriptedEngine()
    model = make(engine)
    stop = stop_request("nobody")
    model.execute([stop])
    assert data(finished(stop)) == [([], "cancelled", FINAL)]
    assert engine.cancels == [] and engine.requests == {}


def test_stop_without_a_request_id_is_invalid_arg(make):
    engine = ScriptedEngine([[[([1], False)]]])
    model = make(engine)
    running = gen_request(streaming=True)  # no request id either
    model.execute([running])
    wait_until(lambda: len(running.sender.sent) == 1)
    stop = stop_request("")
    model.execute([stop])
    err = only_error(stop)
    assert err.code() == pbu.TritonError.INVALID_ARG and "request id" in err.message()
    assert engine.cancels == []
    running.cancelled = True  # end it
    finished(running)


def test_client_cancel_calls_engine_cancel(make):
    engine = ScriptedEngine([[[([1], False)]], [[([1], False)]]])
    model = make(engine)
    keep, drop = gen_request(streaming=True), gen_request(streaming=True)
    model.execute([keep, drop])
    wait_until(lambda: len(keep.sender.sent) == 1 and len(drop.sender.sent) == 1)
    drop.cancelled = True
    assert data(finished(drop)) == [([1], "", 0), ([], "cancelled", FINAL)]
    assert set(engine.cancels) == {1}
    assert not keep.sender.finished
    keep.cancelled = True
    finished(keep)


def test_finished_requests_leave_the_in_flight_table(make):
    engine = ScriptedEngine([[[([1], True, "length")]]])
    model = make(engine)
    request = gen_request(request_id="x")
    model.execute([request])
    finished(request)
    wait_until(lambda: "x" not in model._inflight)


# --- metrics and finalize --------------------------------------------------------------------


def families_of(model_name):
    out = {}
    for f in pbu.metric_families:
        for m in f.metrics:
            if m.labels.get("model") == model_name:
                out[f.name] = (f, m)
    return out


def test_metrics_families_exist_and_follow_engine_stats(make):
    engine = ScriptedEngine()
    make(engine, name="llm_engine_metrics")
    fams = families_of("llm_engine_metrics")
    kinds = {"uip_llm_active_sequences": "GAUGE", "uip_llm_waiting_sequences": "GAUGE",
             "uip_llm_kv_blocks_used": "GAUGE", "uip_llm_kv_blocks_total": "GAUGE",
             "uip_llm_tokens_generated_total": "COUNTER",
             "uip_llm_prefix_cache_queries_total": "COUNTER",
             "uip_llm_prefix_cache_hits_total": "COUNTER",
             "uip_llm_preemptions_total": "COUNTER",
             "uip_llm_time_to_first_token_seconds": "HISTOGRAM",
             "uip_llm_time_per_output_token_seconds": "HISTOGRAM",
             "uip_llm_e2e_request_latency_seconds": "HISTOGRAM"}
    assert set(fams) == set(kinds)  # the steps family gets a metric per path once seen
    for name, kind in kinds.items():
        assert fams[name][0].kind == getattr(pbu.MetricFamily, kind), name
    assert fams["uip_llm_active_sequences"][1].labels == {"model": "llm_engine_metrics",
                                                          "runtime": "torch"}
    active, waiting, kv, tokens, hits, pre = (fams[n][1] for n in (
        "uip_llm_active_sequences", "uip_llm_waiting_sequences", "uip_llm_kv_blocks_used",
        "uip_llm_tokens_generated_total", "uip_llm_prefix_cache_hits_total",
        "uip_llm_preemptions_total"))

    def seen():
        return active.value, waiting.value, kv.value, tokens.value, hits.value, pre.value

    engine.stats_value = EngineStats(3, 1, 12, 100, 40, prefix_cache_queries=9,
                                     prefix_cache_hits=6, preemptions=2)
    wait_until(lambda: seen() == (3.0, 1.0, 12.0, 40.0, 6.0, 2.0))
    engine.stats_value = EngineStats(1, 0, 4, 100, 55, prefix_cache_queries=9,
                                     prefix_cache_hits=7, preemptions=2,
                                     steps_by_path={"graph_decode": 30, "split_eager": 2})
    wait_until(lambda: seen() == (1.0, 0.0, 4.0, 55.0, 7.0, 2.0))
    engine.stats_value = EngineStats(1, 0, 4, 100, 55, prefix_cache_queries=9,
                                     prefix_cache_hits=7, preemptions=2,
                                     steps_by_path={"graph_decode": 41, "split_eager": 2,
                                                    "eager": 1})
    time.sleep(0.25)  # a few more updates: each counter counts each event once
    assert (tokens.value, hits.value, pre.value) == (55.0, 7.0, 2.0)
    steps = {m.labels["path"]: m.value for f in pbu.metric_families
             if f.name == "uip_llm_engine_steps_total" for m in f.metrics
             if m.labels.get("model") == "llm_engine_metrics"}
    assert steps == {"graph_decode": 41.0, "split_eager": 2.0, "eager": 1.0}


def test_cancel_poll_s_must_be_positive():
    config = engine_config()
    config["parameters"]["cancel_poll_s"] = {"string_value": "0"}
    with pytest.raises(ValueError, match="cancel_poll_s must be > 0"):
        LlmEngineModel().initialize(pbu.model_args(config))


def test_streamed_requests_feed_the_latency_histograms(make):
    engine = ScriptedEngine([[[([1], False)], [([2], False)], [([3], True, "length")]]])
    model = make(engine, name="llm_engine_latency")
    req = gen_request(streaming=True)
    model.execute([req])
    wait_until(lambda: req.sender.finished)
    fams = families_of("llm_engine_latency")
    ttft = fams["uip_llm_time_to_first_token_seconds"][1]
    tpot = fams["uip_llm_time_per_output_token_seconds"][1]
    e2e = fams["uip_llm_e2e_request_latency_seconds"][1]
    assert len(ttft.observed) == 1 and ttft.observed[0] >= 0
    assert len(tpot.observed) == 1 and tpot.observed[0] >= 0
    assert len(e2e.observed) == 1 and e2e.observed[0] >= ttft.observed[0]
    assert ttft.buckets == sorted(ttft.buckets)


def test_a_request_that_is_not_streamed_is_timed_end_to_end_only(make):
    engine = ScriptedEngine([[[([1, 2], True, "length")]]])
    model = make(engine, name="llm_engine_unary")
    req = gen_request(streaming=False)
    model.execute([req])
    wait_until(lambda: req.sender.finished)
    fams = families_of("llm_engine_unary")
    assert len(fams["uip_llm_e2e_request_latency_seconds"][1].observed) == 1
    assert fams["uip_llm_time_to_first_token_seconds"][1].observed == []


def test_one_dispatcher_thread_serves_every_stream(make):
    """The stub's threads do not grow with the number of streams."""
    engine = ScriptedEngine()  # scripts run out: every request waits until cancelled
    model = make(engine)
    before = threading.active_count()
    reqs = [gen_request(streaming=True) for _ in range(64)]
    model.execute(reqs)
    assert threading.active_count() == before
    for r in reqs:
        r.cancelled = True
    wait_until(lambda: all(r.sender.finished for r in reqs))
    assert sorted(engine.cancels) == list(range(64))  # each cancelled exactly once


def test_finalize_shuts_the_engine_down_and_stops_the_metrics_thread(make):
    engine = ScriptedEngine()
    model = make(engine)
    threads = list(model._threads)
    model.finalize()
    assert engine.shutdowns == 1
    assert not any(t.is_alive() for t in threads)


# --- LoRA: lora_name and control requests --------------------------------------------------


class LoraEngine(ScriptedEngine):
    def __init__(self):
        super().__init__([[[([7], True, "length")]]])
        self.loaded: list[str] = []

    def adapters(self):
        return {"enabled": True, "available": ["a"], "loaded": [{"name": n} for n in self.loaded]}

    def load_adapter(self, name):
        self.loaded.append(name)

    def unload_adapter(self, name):
        return name in self.loaded and not self.loaded.remove(name)


def control(op, name=None, key=None):
    from uip.llm.engine_tensors import encode_control

    return pbu.Request(encode_control(op, name, key))


def test_lora_name_reaches_the_engine(make):
    engine = LoraEngine()
    model = make(engine)
    request = gen_request(lora_name=np.array([[b"a"]], dtype=object))
    model.execute([request])
    finished(request)
    assert engine.requests[0].lora_name == "a"


def test_lora_control_checks_the_admin_key_and_answers_json(make, monkeypatch):
    import json

    model = make(LoraEngine())
    monkeypatch.delenv("UIP_ADMIN_KEY", raising=False)
    request = control("list", key="k")
    model.execute([request])
    assert "no admin key" in only_error(request).message()
    monkeypatch.setenv("UIP_ADMIN_KEY", "k")
    request = control("load", "a", key="wrong")
    model.execute([request])
    error = only_error(request)
    assert error.code() == pbu.TritonError.INVALID_ARG and "admin key" in error.message()
    request = control("load", "a", key="k")
    model.execute([request])
    (resp, flags), = finished(request)
    assert flags == FINAL
    assert json.loads(resp.outputs()["lora_status"][0, 0])["loaded"] == [{"name": "a"}]
    request = control("unload", "b", key="k")
    model.execute([request])
    assert "'b' is not loaded" in only_error(request).message()
