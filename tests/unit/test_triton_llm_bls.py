"""The llm_bls adapter over a fake multiplexed engine stream (one driver thread for every
request: text, merged chunks, stop strings, client cancels, error codes passed through or
mapped, a broken stream, a bounded thread count with 64 streams), its `engine_transport: bls`
path over the stand-in BLS, and BlsEngineStream (chunks merged, errors, stop once)."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
from support import fake_pb_utils as pbu
from support.fake_pb_utils import TIMEOUT_S, finished, only_error, wait_until

from uip.llm.engine_tensors import EngineChunk, decode_request, encode_response
from uip.llm.orchestrate import EngineStreamError, TextPipeline
from uip.triton.engine_streams import BlsEngineStream, GrpcEngineMux
from uip.triton.models import llm_bls
from uip.triton.models.llm_bls import LlmBlsModel

FINAL = pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL




# --- the adapter (grpc transport: one driver, one multiplexed stream) ------------------------


class FakeMux:
    """Stands in for GrpcEngineMux: records what the driver sends; the engine's responses are
    played through `on_event` (from a script at submit, or by the test with `play`). A stop
    is confirmed with a final 'cancelled' chunk, as llm_engine does, unless `confirm` is off."""

    def __init__(self, url, model, on_event):
        self.url, self.model, self.on_event = url, model, on_event
        self.submitted: dict[str, dict] = {}  # request id -> engine inputs, in order
        self.stops: list[str] = []
        self.finished: list[str] = []
        self.scripts: list[list] = []  # played at each submit, in order
        self.confirm = True
        self.refuse: Exception | None = None
        self.closed = False
        self.engine_checks = 0

    def submit(self, tid, inputs):
        if self.refuse is not None:
            raise self.refuse
        self.submitted[tid] = inputs
        self.play(tid, *(self.scripts.pop(0) if self.scripts else []))

    def play(self, tid, *items):
        for item in items:
            self.on_event(tid, item)

    def stop(self, tid, inputs):
        assert inputs is self.submitted[tid]
        self.stops.append(tid)
        if self.confirm:
            self.on_event(tid, EngineChunk([], "cancelled"))

    def finish(self, tid):
        self.finished.append(tid)

    def check_engine(self):
        self.engine_checks += 1

    def close(self):
        self.closed = True

    def tids(self):
        return list(self.submitted)


@pytest.fixture(scope="module")
def bls_config(llm_tiny_dir):
    return pbu.repository_config("llm_bls", artifact=str(llm_tiny_dir), cancel_poll_s="0.01")


@pytest.fixture
def model(bls_config, monkeypatch):
    monkeypatch.setattr(llm_bls, "GrpcEngineMux", FakeMux)
    m = LlmBlsModel()
    m.initialize(pbu.model_args(bls_config))
    yield m
    m.finalize()


def use(model, *scripts):
    """The next engine requests play `scripts` (one list of chunks/errors per request)."""
    model.mux.scripts.extend(list(s) for s in scripts)


def client_request(text="hello world", **extra):
    inputs = {"text_input": np.array([[text.encode()]], dtype=object)}
    for k, v in extra.items():
        dtype = object if isinstance(v, bytes) else type(v)
        inputs[k] = np.array([[v]], dtype=dtype if dtype is not int else np.int32)
    return pbu.Request(inputs)



def texts(sent):
    out = []
    for resp, flags in sent:
        assert not resp.has_error()
        o = resp.outputs()
        out.append((o["text_output"][0, 0].decode(), o["finish_reason"][0, 0].decode(), flags))
    return out


def ids_of(model, text):
    return model.tokenizer.encode(text, add_special_tokens=False)


def one_by_one(ids, reason="length"):
    return [EngineChunk([i], reason if k == len(ids) - 1 else None) for k, i in enumerate(ids)]


def forgotten(model, tid):
    """The driver dropped the request and told the mux so."""
    wait_until(lambda: tid in model.mux.finished)
    return tid not in model._active


def test_initialize_reads_the_spec(model, llm_tiny_dir):
    assert model.engine_model == "llm_engine" and model.transport == "grpc"
    assert model.poll_s == 0.01 and model.pre.limits.max_tokens == 1024
    assert model.settings.artifact == llm_tiny_dir
    assert isinstance(model.mux, FakeMux) and model.mux.model == "llm_engine"
    assert model._driver.is_alive()


def test_engine_transport_picks_the_path(bls_config, monkeypatch):
    monkeypatch.setenv("UIP_GRPC_URL", "localhost:4242")
    m = LlmBlsModel()
    m.initialize(pbu.model_args(bls_config))
    try:
        assert isinstance(m.mux, GrpcEngineMux) and m.mux.url == "localhost:4242"
        assert m.mux.model == "llm_engine"
    finally:
        m.finalize()
    assert not m._driver.is_alive()
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "engine_transport": {"string_value": "bls"}}}
    b = LlmBlsModel()
    b.initialize(pbu.model_args(config))
    assert b.mux is None and b._driver is None
    s = b._engine({"input_ids": np.array([[1]], dtype=np.int32)})
    s2 = b._engine({"input_ids": np.array([[1]], dtype=np.int32)})
    assert isinstance(s, BlsEngineStream) and s.model == "llm_engine"
    assert s.request_id.startswith("llm_bls-") and s2.request_id != s.request_id
    b.finalize()


def test_initialize_refuses_an_unknown_transport(bls_config):
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "engine_transport": {"string_value": "http"}}}
    with pytest.raises(ValueError, match="engine_transport"):
        LlmBlsModel().initialize(pbu.model_args(config))


@pytest.mark.parametrize("value", ["0", "-1"])
def test_initialize_refuses_a_cancel_poll_that_is_not_positive(bls_config, value):
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "cancel_poll_s": {"string_value": value}}}
    with pytest.raises(ValueError, match="cancel_poll_s must be > 0"):
        LlmBlsModel().initialize(pbu.model_args(config))


def start_stream(model, text: str):
    """One streamed client request for as many tokens as `text` has, at the engine."""
    ids = ids_of(model, text)
    request = client_request("say", stream=True, max_tokens=len(ids))
    model.execute([request])
    wait_until(lambda: len(model.mux.submitted) == 1)
    (tid,) = model.mux.tids()
    return ids, request, tid


def test_streams_text_as_the_engine_sends_it(model):
    ids, request, tid = start_stream(model, " hello world")
    for n, chunk in enumerate(one_by_one(ids), 1):
        model.mux.play(tid, chunk)
        wait_until(lambda n=n: len(request.sender.sent) == n)
    out = texts(finished(request))
    assert "".join(t for t, _, _ in out) == " hello world" and len(out) == len(ids)
    assert out[-1][1:] == ("length", FINAL) and all(f == 0 for _, _, f in out[:-1])
    call = decode_request(model.mux.submitted[tid], max_tokens=1024)
    assert call.request.input_ids == model.tokenizer("say")["input_ids"]
    assert call.request.streaming and call.request.max_new_tokens == len(ids)
    assert tid.startswith("llm_bls-") and model.mux.stops == []
    assert forgotten(model, tid)


def test_first_text_and_the_final_response_feed_the_latency_histograms(model):
    ids, request, tid = start_stream(model, " hello world")
    for chunk in one_by_one(ids):
        model.mux.play(tid, chunk)
    finished(request)
    fams = {f.name: f.metrics[-1] for f in pbu.metric_families
            if f.name.startswith("uip_llm_bls_")}
    ttfr = fams["uip_llm_bls_time_to_first_response_seconds"]
    e2e = fams["uip_llm_bls_e2e_request_latency_seconds"]
    wait_until(lambda: len(e2e.observed) == 1)
    assert len(ttfr.observed) == 1 and 0 <= ttfr.observed[0] <= e2e.observed[0]
    assert ttfr.labels == {"model": "llm_bls"} and ttfr.buckets == sorted(ttfr.buckets)


def test_queued_engine_responses_merge_into_one_client_response(model):
    ids = ids_of(model, " hello world")
    use(model, one_by_one(ids))  # all queued before the driver reads them
    request = client_request("say", stream=True)
    model.execute([request])
    assert texts(finished(request)) == [(" hello world", "length", FINAL)]


def test_finals_go_first_and_new_requests_start_between_deliveries(model, monkeypatch):
    model._closing.set()  # the test steps the driver by hand
    model._driver.join(TIMEOUT_S)
    model.execute([client_request(f"prompt {i}") for i in range(20)])
    model._handle(drain(model._events))  # their starts: 20 engine requests
    tids, log = model.mux.tids(), []
    deliver, submit = model._deliver, model.mux.submit
    monkeypatch.setattr(model, "_deliver", lambda tid, item: (
        log.append(("deliver", item.final)), deliver(tid, item)))
    monkeypatch.setattr(model.mux, "submit", lambda tid, inputs: (
        log.append(("submit", None)), submit(tid, inputs)))
    model.execute([client_request("late")])  # queued while the driver delivers
    word = ids_of(model, " world")
    carried = model._handle([("engine", tid, EngineChunk(word, "length" if i % 4 == 0 else None))
                             for i, tid in enumerate(tids)])
    assert [kind for kind, _ in log].index("submit") == llm_bls.START_EVERY  # not after 20
    finals = [final for kind, final in log if kind == "deliver"]
    assert finals == [True] * 5 + [False] * 15 and carried == []


def drain(q: queue.Queue) -> list:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_requests_are_multiplexed_by_request_id(model):
    a_ids, b_ids = ids_of(model, " alpha"), ids_of(model, " beta")
    a, b = client_request("one"), client_request("two")
    model.execute([a, b])
    wait_until(lambda: len(model.mux.submitted) == 2)
    ta, tb = model.mux.tids()
    assert ta != tb
    model.mux.play(tb, EngineChunk(b_ids, "stop"))
    model.mux.play(ta, EngineChunk(a_ids, "length"))
    assert texts(finished(a)) == [(" alpha", "length", FINAL)]
    assert texts(finished(b)) == [(" beta", "stop", FINAL)]


def test_stop_string_ends_the_output_stops_the_engine_and_drains(model):
    model.mux.confirm = False
    ids = ids_of(model, " hello world and more")
    request = client_request(stream=True, stop_words=b" world")
    model.execute([request])
    wait_until(lambda: len(model.mux.submitted) == 1)
    (tid,) = model.mux.tids()
    model.mux.play(tid, *one_by_one(ids)[:-1])
    out = texts(finished(request))
    assert "".join(t for t, _, _ in out) == " hello" and out[-1][1:] == ("stop", FINAL)
    assert model.mux.stops == [tid]
    time.sleep(0.05)
    assert tid in model._active and tid not in model.mux.finished  # until the engine confirms
    model.mux.play(tid, EngineChunk([], "cancelled"))
    assert forgotten(model, tid) and len(request.sender.sent) == len(out)


def test_a_drain_gives_up_after_drain_s(model):
    model.mux.confirm = False
    model.drain_s = 0.05
    use(model, [EngineChunk(ids_of(model, " hello world and more"))])
    request = client_request(stop_words=b" world")
    model.execute([request])
    assert texts(finished(request)) == [(" hello", "stop", FINAL)]
    (tid,) = model.mux.tids()
    assert forgotten(model, tid)


def test_client_cancel_stops_the_engine_and_ends_cancelled_after_its_end(model):
    model.mux.confirm = False
    request = client_request(stream=True)
    model.execute([request])
    wait_until(lambda: len(model.mux.submitted) == 1)
    (tid,) = model.mux.tids()
    model.mux.play(tid, EngineChunk(ids_of(model, " hello")))
    wait_until(lambda: len(request.sender.sent) == 1)  # the first delta
    assert not request.sender.finished
    request.cancelled = True
    wait_until(lambda: model.mux.stops == [tid])
    time.sleep(0.05)
    assert not request.sender.finished  # the engine did not confirm yet
    model.mux.play(tid, EngineChunk([9]), EngineChunk([], "cancelled"))
    out = texts(finished(request))
    assert out == [(" hello", "", 0), ("", "cancelled", FINAL)]
    assert model.mux.stops == [tid] and forgotten(model, tid)


def test_engine_error_is_the_clients_error(model):
    err = pbu.TritonError("llm_engine is overloaded", pbu.TritonError.UNAVAILABLE)
    use(model, [EngineChunk([5]), EngineStreamError("llm_engine: overloaded", err)])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got is err and got.code() == pbu.TritonError.UNAVAILABLE
    (tid,) = model.mux.tids()
    assert model.mux.stops == [] and forgotten(model, tid)  # the engine ended it already


def test_engine_error_message_over_grpc_is_internal(model):
    # Triton's gRPC stream carries llm_engine's message without its code
    use(model, [EngineStreamError("llm_engine: 'request_output_len' is 99999, above the cap")])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL
    assert got.message() == "EngineStreamError: llm_engine: 'request_output_len' is 99999, " \
                            "above the cap"


def test_broken_stream_fails_the_request_with_a_clear_error(model):
    request = client_request(stream=True)
    model.execute([request])
    wait_until(lambda: len(model.mux.submitted) == 1)
    (tid,) = model.mux.tids()
    model.mux.play(tid, EngineChunk(ids_of(model, " hello")))
    model.mux.play(tid, EngineStreamError("the gRPC stream to llm_engine at x:1 broke "
                                          "(UNAVAILABLE: Socket closed)"))
    sent = finished(request)
    resp, flags = sent[-1]
    assert flags == FINAL and resp.error().code() == pbu.TritonError.UNAVAILABLE  # retry
    assert "broke (UNAVAILABLE: Socket closed)" in resp.error().message()
    assert model.mux.stops == [] and forgotten(model, tid)


def test_unreachable_engine_is_internal_and_names_the_setting(model):
    model.mux.refuse = EngineStreamError("cannot reach llm_engine at nowhere:1 (set the spec's "
                                         "engine_url or $UIP_GRPC_URL): bad address")
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL and "engine_url" in got.message()
    assert model._active == {} and model.mux.stops == []


def test_other_failure_is_internal_and_stops_the_engine(model, monkeypatch):
    def broken(self, chunk):
        raise RuntimeError("detokenizer broke")

    monkeypatch.setattr(TextPipeline, "feed", broken)
    use(model, [EngineChunk([5])])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL
    assert got.message() == "RuntimeError: detokenizer broke"
    (tid,) = model.mux.tids()
    assert model.mux.stops == [tid] and forgotten(model, tid)


@pytest.mark.parametrize("request_, message", [
    (pbu.Request({}), "input 'text_input' is required"),
    (client_request(max_tokens=1025), "1025"),
    (client_request(temperature=np.float32(-1.0)), "temperature"),
])
def test_bad_client_input_is_invalid_arg_without_an_engine_call(model, request_, message):
    model.execute([request_])
    got = only_error(request_)
    assert got.code() == pbu.TritonError.INVALID_ARG and message in got.message()
    assert model.mux.submitted == {}


def test_one_bad_request_does_not_fail_the_others(model):
    use(model, [EngineChunk(ids_of(model, " ok"), "length")])
    bad, good = pbu.Request({}), client_request()
    model.execute([bad, good])
    assert only_error(bad).code() == pbu.TritonError.INVALID_ARG
    assert texts(finished(good)) == [(" ok", "length", FINAL)]


def test_64_streams_run_on_a_bounded_number_of_threads(model):
    """One driver for every request: 64 streams in flight add no thread; cancels, a stop
    string and natural ends are all served by it."""
    before = threading.active_count()
    hello = ids_of(model, " hello world and more")
    requests = [client_request(f"prompt {i}", stream=True,
                               **({"stop_words": b" world"} if i % 4 == 1 else {}))
                for i in range(64)]
    model.execute(requests[:32])
    model.execute(requests[32:])
    wait_until(lambda: len(model.mux.submitted) == 64)
    tids = model.mux.tids()
    for tid in tids:
        model.mux.play(tid, EngineChunk(hello[:1]))
    wait_until(lambda: all(len(r.sender.sent) >= 1 for r in requests))
    first = model.tokenizer.decode(hello[:1])
    assert threading.active_count() <= before
    assert len(model._active) == 64
    for i, (tid, r) in enumerate(zip(tids, requests, strict=True)):
        if i % 4 == 0:
            r.cancelled = True
        elif i % 4 == 1:  # the stop string, before the engine's end
            model.mux.play(tid, *one_by_one(hello[1:])[:-1])
        else:
            model.mux.play(tid, *one_by_one(hello[1:]))
    for i, r in enumerate(requests):
        out = texts(finished(r))
        reason = {0: "cancelled", 1: "stop"}.get(i % 4, "length")
        assert out[-1][1:] == (reason, FINAL), i
        text = "".join(t for t, _, _ in out)
        assert text == {0: first, 1: " hello"}.get(i % 4, " hello world and more"), i
    assert threading.active_count() <= before
    wait_until(lambda: model._active == {})
    assert sorted(model.mux.stops) == sorted(t for i, t in enumerate(tids) if i % 4 in (0, 1))


def test_finalize_ends_what_is_in_flight(bls_config, monkeypatch):
    monkeypatch.setattr(llm_bls, "GrpcEngineMux", FakeMux)
    m = LlmBlsModel()
    m.initialize(pbu.model_args(bls_config))
    request = client_request(stream=True)
    m.execute([request])
    wait_until(lambda: len(m.mux.submitted) == 1)
    m.finalize()
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL and "shutting down" in got.message()
    assert m.mux.closed and not m._driver.is_alive()


# --- engine_transport: bls (a thread per request, as before) --------------------------------


class FakeEngineStream:
    """Plays `chunks` (EngineChunk, or an exception to raise) one per `next`; then waits.
    After `stop()` it ends with a 'cancelled' chunk, as llm_engine does."""

    def __init__(self, inputs, chunks=()):
        self.inputs = inputs
        self.items = list(chunks)
        self.started = self.stops = self.closes = 0
        self.ended = False
        self._stopped = threading.Event()

    def start(self):
        self.started += 1

    def next(self, timeout):
        if self.ended:
            return None
        if self._stopped.is_set():
            self.ended = True
            return EngineChunk([], "cancelled")
        if not self.items:
            self._stopped.wait(timeout)
            return None
        item = self.items.pop(0)
        if isinstance(item, Exception):
            self.ended = isinstance(item, EngineStreamError)  # as BlsEngineStream marks it
            raise item
        self.ended = item.final
        return item

    def stop(self):
        self.stops += 1
        self._stopped.set()

    def close(self):
        self.closes += 1


@pytest.fixture
def bls_model(bls_config, monkeypatch):
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "engine_transport": {"string_value": "bls"}}}
    m = LlmBlsModel()
    m.initialize(pbu.model_args(config))
    m.streams, m.scripts = [], []

    def engine(self, inputs):
        s = FakeEngineStream(inputs, self.scripts.pop(0) if self.scripts else [])
        self.streams.append(s)
        return s

    monkeypatch.setattr(LlmBlsModel, "_engine", engine)
    yield m
    m.finalize()


def test_bls_transport_streams_text(bls_model):
    ids = ids_of(bls_model, " hello world")
    bls_model.scripts.append(one_by_one(ids))
    request = client_request("say", stream=True)
    bls_model.execute([request])
    out = texts(finished(request))
    assert "".join(t for t, _, _ in out) == " hello world" and out[-1][1:] == ("length", FINAL)
    (engine,) = bls_model.streams
    assert engine.started == 1 and engine.stops == 0 and engine.closes == 1


def test_bls_transport_passes_the_engine_error_code(bls_model):
    err = pbu.TritonError("'request_output_len' must be <= 16", pbu.TritonError.INVALID_ARG)
    bls_model.scripts.append([EngineStreamError(err.message(), err)])
    request = client_request()
    bls_model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INVALID_ARG and got.message() == err.message()


def test_bls_transport_other_failure_is_internal_and_stops_the_engine(bls_model):
    bls_model.scripts.append([EngineChunk([5]), RuntimeError("detokenizer broke")])
    request = client_request()
    bls_model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL
    assert got.message() == "RuntimeError: detokenizer broke"
    (engine,) = bls_model.streams
    assert engine.stops == 1 and engine.closes == 1


def test_bls_transport_client_cancel(bls_model):
    bls_model.scripts.append([EngineChunk(ids_of(bls_model, " hello"))])
    request = client_request(stream=True)
    bls_model.execute([request])
    wait_until(lambda: len(request.sender.sent) == 1)
    request.cancelled = True
    out = texts(finished(request))
    assert out == [(" hello", "", 0), ("", "cancelled", FINAL)]
    (engine,) = bls_model.streams
    assert engine.stops == 1 and engine.closes == 1


# --- BlsEngineStream -------------------------------------------------------------------------


def engine_response(ids, reason=""):
    return pbu.InferenceResponse(output_tensors=[
        pbu.Tensor(k, v) for k, v in encode_response(ids, reason or None).items()])


@pytest.fixture
def bls(monkeypatch):
    """bls(responses_for(request)) -> the BLS requests made."""
    calls = []

    def use_handler(handler):
        def record(request):
            calls.append(request)
            return handler(request)

        monkeypatch.setattr(pbu, "bls_handler", record)
        return calls

    return use_handler


INPUTS = {"input_ids": np.array([[11, 12, 13]], dtype=np.int32),
          "request_output_len": np.array([[8]], dtype=np.int32)}


def started(responses):
    """A started stream whose engine sends `responses`, once they are all queued."""
    s = BlsEngineStream("llm_engine", INPUTS, "rid-7")
    s.start()
    wait_until(lambda: s.queue.qsize() == len(responses) + 1)  # + the end of the iterator
    return s


def inputs_of(request):
    return {t.name(): t.as_numpy() for t in request.inputs()}


def test_bls_stream_sends_the_request_and_merges_queued_chunks(bls):
    responses = [engine_response([1, 2]), engine_response([3]), engine_response([4], "length"),
                 pbu.InferenceResponse()]  # the FINAL-flag-only response Triton sends last
    calls = bls(lambda r: responses)
    s = started(responses)
    chunk = s.next(timeout=1)
    assert chunk == EngineChunk([1, 2, 3, 4], "length")
    assert s.ended and s.next(timeout=0.01) is None
    (req,) = calls
    assert req.model_name == "llm_engine" and req.request_id() == "rid-7"
    assert req.requested_output_names == ["output_ids", "finish_reason"]
    assert {k: v.tolist() for k, v in inputs_of(req).items()} == \
        {k: v.tolist() for k, v in INPUTS.items()}


def test_bls_stream_error_response_carries_the_triton_error(bls):
    err = pbu.TritonError("bad request_output_len", pbu.TritonError.INVALID_ARG)
    responses = [engine_response([1]), pbu.InferenceResponse(error=err)]
    bls(lambda r: responses)
    s = started(responses)
    assert s.next(timeout=1) == EngineChunk([1])  # the error waits for the next call
    with pytest.raises(EngineStreamError, match="bad request_output_len") as info:
        s.next(timeout=1)
    assert info.value.error is err and info.value.error.code() == pbu.TritonError.INVALID_ARG
    assert s.ended and s.next(timeout=0.01) is None


def test_bls_stream_without_a_final_response_is_an_error(bls):
    responses = [engine_response([1]), engine_response([2])]
    bls(lambda r: responses)
    s = started(responses)
    assert s.next(timeout=1) == EngineChunk([1, 2])
    with pytest.raises(EngineStreamError, match="without a final response") as info:
        s.next(timeout=1)
    assert info.value.error is None


def test_bls_stream_iterator_failure_is_an_error(bls):
    def responses(request):
        yield engine_response([1])
        raise RuntimeError("stub lost")

    bls(responses)
    s = BlsEngineStream("llm_engine", INPUTS, "rid-8")
    s.start()
    wait_until(lambda: s.queue.qsize() == 3)  # one response, the error, the end
    assert s.next(timeout=1) == EngineChunk([1])
    with pytest.raises(EngineStreamError, match="llm_engine: RuntimeError: stub lost"):
        s.next(timeout=1)


def test_bls_stream_next_times_out_with_none(bls):
    gate = queue.Queue()

    def responses(request):
        gate.get(timeout=TIMEOUT_S)
        yield engine_response([], "cancelled")

    bls(responses)
    s = BlsEngineStream("llm_engine", INPUTS, "rid-9")
    s.start()
    assert s.next(timeout=0.02) is None and not s.ended
    gate.put(None)
    assert s.next(timeout=1) == EngineChunk([], "cancelled") and s.ended


def test_bls_stream_stop_sends_the_stop_request_once(bls, caplog):
    stop_answer = [pbu.InferenceResponse(error=pbu.TritonError("not found", 2))]
    calls = bls(lambda r: stop_answer if "stop" in inputs_of(r) else [])
    s = BlsEngineStream("llm_engine", INPUTS, "rid-10")
    s.start()
    s.stop()
    s.stop()
    stops = [c for c in calls if "stop" in inputs_of(c)]
    assert len(stops) == 1
    (stop,) = stops
    got = inputs_of(stop)
    assert stop.request_id() == "rid-10" and stop.model_name == "llm_engine"
    assert got["stop"].tolist() == [[True]] and got["input_ids"].tolist() == [[11]]
    assert got["request_output_len"].tolist() == [[1]]
    assert "stopping rid-10 failed: not found" in caplog.text  # logged, not raised


def test_the_driver_watches_the_engine_stub(model):
    """A dead llm_engine stub never answers in Triton 2.51: the driver asks the mux to check
    for one every poll (the mux then fails the requests in flight with UNAVAILABLE)."""
    wait_until(lambda: model.mux.engine_checks >= 3)


# --- LoRA control requests (`uip lora --model llm_bls`): engine_transport local only ------


def test_control_request_without_a_local_engine_is_invalid_arg(model, monkeypatch):
    from uip.llm.engine_tensors import encode_control

    monkeypatch.setenv("UIP_ADMIN_KEY", "k")
    request = pbu.Request(encode_control("list", key="k", text=True))
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INVALID_ARG
    assert "holds no engine (engine_transport grpc)" in got.message()
    assert "llm_engine" in got.message() and model.mux.submitted == {}


def test_local_engine_answers_control_requests(bls_config, monkeypatch):
    import json

    from test_triton_llm_engine import LoraEngine

    from uip.llm.engine_tensors import encode_control
    from uip.triton import engine_local

    engine = LoraEngine()
    monkeypatch.setattr(engine_local, "create_engine", lambda settings: engine)
    monkeypatch.setenv("UIP_ADMIN_KEY", "k")
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "engine_transport": {"string_value": "local"}}}
    m = LlmBlsModel()
    m.initialize(pbu.model_args(config))
    try:
        def control(op, name=None, key="k"):
            return pbu.Request(encode_control(op, name, key, text=True))

        request = control("load", "a")
        m.execute([request])
        (resp, flags), = finished(request)
        assert flags == FINAL and list(resp.outputs()) == ["lora_status"]
        assert json.loads(resp.outputs()["lora_status"][0, 0])["loaded"] == [{"name": "a"}]
        not_json = pbu.Request({"text_input": np.array([[b""]], dtype=object),
                                "lora_control": np.array([[b"{"]], dtype=object)})
        for request, message in [(control("list", key="wrong"), "admin key"),
                                 (control("unload", "b"), "'b' is not loaded"),
                                 (not_json, "not JSON")]:
            m.execute([request])
            got = only_error(request)
            assert got.code() == pbu.TritonError.INVALID_ARG and message in got.message()
        assert engine.requests == {}
    finally:
        m.finalize()
