"""llm_bls's multiplexed gRPC engine stream against an in-process gRPC server speaking Triton's
protocol (tritonclient's generated servicer): one stream for every request, routing by request
id (error responses included), stop requests, a broken stream failing what is in flight and a
new stream after it, an unreachable address, close, and a bounded number of threads."""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from support import fake_pb_utils as pbu
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from uip.llm.engine_tensors import RESPONSE_OUTPUTS, EngineChunk, encode_response, encode_stop
from uip.llm.orchestrate import EngineStreamError
from uip.triton import engine_streams
from uip.triton.engine_streams import GrpcEngineMux, engine_url, to_chunk

TIMEOUT_S = 10.0
INPUTS = {"input_ids": np.array([[1, 2, 3]], dtype=np.int32),
          "request_output_len": np.array([[4]], dtype=np.int32)}


class FakeResult:
    def __init__(self, ids: list[int], reason: str = ""):
        self.outputs = {"output_ids": np.array(ids, dtype=np.int32).reshape(1, 1, -1),
                        "finish_reason": np.array([[reason.encode()]], dtype=object)}

    def as_numpy(self, name):
        return self.outputs.get(name)


def test_engine_url_precedence(monkeypatch):
    monkeypatch.delenv("UIP_GRPC_URL", raising=False)
    assert engine_url() == "localhost:8001"
    monkeypatch.setenv("UIP_GRPC_URL", "localhost:1234")
    assert engine_url() == "localhost:1234"
    assert engine_url("engine:9000") == "engine:9000"


def test_to_chunk_reads_tokens_and_finish_reason():
    assert to_chunk(FakeResult([5, 6])).tokens == [5, 6]
    assert not to_chunk(FakeResult([5])).final
    last = to_chunk(FakeResult([], "length"))
    assert last.final and last.finish_reason == "length" and last.tokens == []


def test_stop_request_carries_stop_and_one_token():
    stop = encode_stop({"input_ids": np.array([[1, 2, 3]], dtype=np.int32)})
    assert stop["input_ids"].shape == (1, 1) and bool(stop["stop"][0, 0])
    assert stop["request_output_len"][0, 0] == 1


# --- GrpcEngineMux over a fake Triton gRPC endpoint -------------------------------------------


def response(tid: str, ids=(), reason: str = "", error: str = ""):
    """A ModelStreamInferResponse as Triton 2.51 sends it (the id echoed, errors included)."""
    r = service_pb2.ModelStreamInferResponse()
    r.infer_response.id = tid
    if error:
        r.error_message = error
        return r
    r.infer_response.model_name = "llm_engine"
    for name, arr in encode_response(list(ids), reason or None).items():
        if name not in RESPONSE_OUTPUTS:
            continue
        out = r.infer_response.outputs.add()
        out.name, out.datatype = name, np_to_triton_dtype(arr.dtype)
        out.shape.extend(arr.shape)
        raw = serialize_byte_tensor(arr).item() if arr.dtype == object else arr.tobytes()
        r.infer_response.raw_output_contents.append(raw)
    return r


def inputs_of(request) -> dict[str, np.ndarray]:
    dtypes = {"INT32": np.int32, "BOOL": bool}
    return {t.name: np.frombuffer(raw, dtypes[t.datatype]).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)}


class FakeEngine(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Each ModelStreamInfer call: its requests go to `requests`; the test answers through the
    call's queue in `calls` (a response, None to end the stream, or a (code, text) to abort)."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.calls: list[queue.Queue] = []

    def ModelStreamInfer(self, request_iterator, context):  # noqa: N802 - gRPC's name
        answers: queue.Queue = queue.Queue()
        self.calls.append(answers)

        def pump():
            try:
                for r in request_iterator:
                    self.requests.put((len(self.calls) - 1, r))
            except Exception:  # noqa: BLE001 - the call ended
                pass

        threading.Thread(target=pump, daemon=True, name="fake-engine-pump").start()
        while context.is_active():
            try:
                item = answers.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, tuple):
                context.abort(*item)
            yield item

    def request(self):
        return self.requests.get(timeout=TIMEOUT_S)


@pytest.fixture
def engine():
    fake = FakeEngine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.url = f"127.0.0.1:{port}"
    yield fake
    server.stop(0)


class Events:
    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def __call__(self, tid, item):
        self.q.put((tid, item))

    def next(self):
        return self.q.get(timeout=TIMEOUT_S)

    def none(self, wait=0.1):
        time.sleep(wait)
        return self.q.empty()


@pytest.fixture
def mux(engine):
    events = Events()
    m = GrpcEngineMux(engine.url, "llm_engine", events)
    m.events = events
    yield m
    m.close()


def test_mux_sends_every_request_on_one_stream_and_routes_by_id(engine, mux):
    mux.submit("a", INPUTS)
    mux.submit("b", INPUTS)
    (ca, ra), (cb, rb) = engine.request(), engine.request()
    assert ca == cb == 0 and len(engine.calls) == 1  # one stream
    assert (ra.id, rb.id) == ("a", "b") and ra.model_name == "llm_engine"
    assert [o.name for o in ra.outputs] == list(RESPONSE_OUTPUTS)
    assert {k: v.tolist() for k, v in inputs_of(ra).items()} == \
        {k: v.tolist() for k, v in INPUTS.items()}
    (answers,) = engine.calls
    answers.put(response("b", [7, 8]))
    answers.put(response("a", error="'request_output_len' is 99999, above the cap"))
    answers.put(response("b", [9], "length"))
    tid, chunk = mux.events.next()
    assert tid == "b" and chunk == EngineChunk([7, 8])
    tid, err = mux.events.next()
    assert tid == "a" and isinstance(err, EngineStreamError) and err.error is None
    assert str(err) == "llm_engine: 'request_output_len' is 99999, above the cap"
    assert mux.events.next() == ("b", EngineChunk([9], "length"))
    assert mux.inflight() == 2
    mux.finish("a")
    mux.finish("b")
    assert mux.inflight() == 0


def test_mux_stop_goes_on_the_same_stream_with_the_same_id(engine, mux):
    mux.submit("a", INPUTS)
    engine.request()
    mux.stop("a", INPUTS)
    call, stop = engine.request()
    assert call == 0 and stop.id == "a"
    got = inputs_of(stop)
    assert got["stop"].tolist() == [[True]] and got["input_ids"].tolist() == [[1]]
    mux.finish("a")
    mux.stop("a", INPUTS)  # over: nothing is sent
    with pytest.raises(queue.Empty):
        engine.requests.get(timeout=0.1)


def test_mux_broken_stream_fails_what_is_in_flight_and_reconnects(engine, mux):
    mux.submit("a", INPUTS)
    mux.submit("b", INPUTS)
    engine.request(), engine.request()
    mux.finish("b")  # over already: not failed again
    engine.calls[0].put((grpc.StatusCode.UNAVAILABLE, "going away"))
    tid, err = mux.events.next()
    assert tid == "a" and isinstance(err, EngineStreamError)
    assert "the gRPC stream to llm_engine at" in str(err) and "UNAVAILABLE: going away" in str(err)
    assert mux.events.none()
    mux.stop("a", INPUTS)  # its stream is gone: nothing to send, no error
    mux.submit("c", INPUTS)
    call, rc = engine.request()
    assert (call, rc.id) == (1, "c") and len(engine.calls) == 2  # a new stream
    engine.calls[1].put(response("c", [], "length"))
    assert mux.events.next() == ("c", EngineChunk([], "length"))


def test_mux_broken_stream_is_unavailable_for_the_client(engine, mux):
    mux.submit("a", INPUTS)
    engine.request()
    engine.calls[0].put((grpc.StatusCode.UNAVAILABLE, "going away"))
    _, err = mux.events.next()
    assert err.error.code() == pbu.TritonError.UNAVAILABLE
    assert err.error.message().startswith("unavailable, retry later: ")


class FakeCensus:
    def __init__(self, pids):
        self.alive = set(pids)

    def pids(self, model):
        assert model == "llm_engine"
        return set(self.alive)


def test_mux_ends_requests_of_a_dead_engine_stub_with_unavailable(engine, mux, monkeypatch):
    """Triton 2.51 never answers a request whose stub died: the mux notices and fails it."""
    census = FakeCensus({101, 102})
    monkeypatch.setattr(engine_streams, "_stubs", lambda: census)
    mux.submit("a", INPUTS)
    engine.request()
    mux.check_engine()  # the engine's stubs are alive: nothing happens
    assert mux.events.none()
    census.alive.discard(102)  # kill -9 of an llm_engine stub
    mux.check_engine()
    tid, err = mux.events.next()
    assert tid == "a" and err.error.code() == pbu.TritonError.UNAVAILABLE
    assert "stub process died" in str(err)
    census.alive.add(103)  # reloaded: the next request gets a new stream
    mux.submit("b", INPUTS)
    call, rb = engine.request()
    assert (call, rb.id) == (1, "b")


def test_mux_adopts_the_engine_stubs_of_a_reload_while_idle(engine, mux, monkeypatch):
    """The engine was reloaded while the stream had nothing in flight: the stream stays, and
    its requests are checked against the new stubs (not failed for the old ones' death)."""
    census = FakeCensus({101})
    monkeypatch.setattr(engine_streams, "_stubs", lambda: census)
    mux.submit("a", INPUTS)
    engine.request()
    engine.calls[0].put(response("a", [7], "length"))
    assert mux.events.next()[0] == "a"
    mux.finish("a")
    census.alive = {201}  # reloaded while idle
    mux.submit("b", INPUTS)
    call, _ = engine.request()
    mux.check_engine()
    assert call == 0 and mux.events.none()  # same stream, nothing failed
    census.alive = set()  # now the new stub dies with "b" in flight
    mux.check_engine()
    tid, err = mux.events.next()
    assert tid == "b" and err.error.code() == pbu.TritonError.UNAVAILABLE


def test_mux_stream_ended_by_the_server_fails_what_is_in_flight(engine, mux):
    mux.submit("a", INPUTS)
    engine.request()
    engine.calls[0].put(None)
    tid, err = mux.events.next()
    assert tid == "a" and "the server ended the stream" in str(err)


def test_mux_unreachable_engine_fails_the_request_naming_the_setting():
    events = Events()
    m = GrpcEngineMux("127.0.0.1:1", "llm_engine", events)
    try:
        m.submit("a", INPUTS)
        tid, err = events.next()
        assert tid == "a" and isinstance(err, EngineStreamError)
        assert "UNAVAILABLE" in str(err) and "engine_url" in str(err)
    finally:
        m.close()


def test_mux_close_cancels_the_stream_without_events(engine, mux):
    mux.submit("a", INPUTS)
    engine.request()
    mux.close()
    assert mux.events.none()
    with pytest.raises(EngineStreamError, match="shutting down"):
        mux.submit("b", INPUTS)


def client_threads(before: set[int]) -> list[str]:
    """Threads started since `before` that are not the fake server's (its pool, its pumps)."""
    return [t.name for t in threading.enumerate() if t.ident not in before
            and not t.name.startswith(("ThreadPoolExecutor", "fake-engine"))]


def test_mux_threads_stay_bounded_with_64_requests(engine, mux):
    before = {t.ident for t in threading.enumerate()}
    mux.submit("r0", INPUTS)
    engine.request()
    one = client_threads(before)
    assert "uip-llm-bls-grpc" in one and len(one) <= 3  # its reader, gRPC's own two
    for i in range(1, 64):
        mux.submit(f"r{i}", INPUTS)
    for _ in range(63):
        engine.request()
    assert mux.inflight() == 64 and len(engine.calls) == 1
    assert len(client_threads(before)) <= len(one)
    for i in range(64):
        engine.calls[0].put(response(f"r{i}", [i], "length"))
    got = dict(mux.events.next() for _ in range(64))
    assert got == {f"r{i}": EngineChunk([i], "length") for i in range(64)}
    assert len(client_threads(before)) <= len(one)
