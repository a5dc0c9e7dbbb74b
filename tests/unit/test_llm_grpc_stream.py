"""llm_bls's gRPC engine stream, without a server: URL resolution, chunks, stop, errors."""

from __future__ import annotations

import numpy as np
import pytest
import support.fake_pb_utils  # noqa: F401 - registers the stand-in before uip.triton imports
from tritonclient.utils import InferenceServerException

from uip.llm.engine_tensors import encode_stop as stop_inputs
from uip.llm.orchestrate import EngineStreamError
from uip.triton import engine_streams
from uip.triton.engine_streams import GrpcEngineStream, engine_url, to_chunk


class FakeResult:
    def __init__(self, ids: list[int], reason: str = ""):
        self.outputs = {"output_ids": np.array(ids, dtype=np.int32).reshape(1, 1, -1),
                        "finish_reason": np.array([[reason.encode()]], dtype=object)}

    def as_numpy(self, name):
        return self.outputs.get(name)


class FakeClient:
    def __init__(self, url):
        self.url, self.sent, self.callback, self.stopped, self.closed = url, [], None, False, False

    def start_stream(self, callback):
        self.callback = callback

    def async_stream_infer(self, model, inputs, request_id, outputs):
        self.sent.append((model, {i.name(): i for i in inputs}, request_id,
                          [o.name() for o in outputs]))

    def stop_stream(self, cancel_requests=False):
        self.stopped = cancel_requests

    def close(self):
        self.closed = True


@pytest.fixture
def client(monkeypatch):
    made = []

    def factory(url):
        made.append(FakeClient(url))
        return made[-1]

    monkeypatch.setattr(engine_streams.grpcclient, "InferenceServerClient", factory)
    return made


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
    stop = stop_inputs({"input_ids": np.array([[1, 2, 3]], dtype=np.int32)})
    assert stop["input_ids"].shape == (1, 1) and bool(stop["stop"][0, 0])
    assert stop["request_output_len"][0, 0] == 1


def test_stream_sends_reads_stops_and_closes(client):
    inputs = {"input_ids": np.array([[1, 2, 3]], dtype=np.int32),
              "request_output_len": np.array([[4]], dtype=np.int32)}
    s = GrpcEngineStream("localhost:5", "llm_engine", inputs, "rid-1")
    s.start()
    (c,) = client
    model, sent, rid, outputs = c.sent[0]
    assert (model, rid, c.url) == ("llm_engine", "rid-1", "localhost:5")
    assert set(sent) == {"input_ids", "request_output_len"} and outputs == ["output_ids",
                                                                           "finish_reason"]
    assert s.next(0.01) is None  # nothing yet
    c.callback(FakeResult([7]), None)
    assert s.next(1).tokens == [7] and not s.ended
    s.stop()
    s.stop()  # idempotent
    assert len(c.sent) == 2 and c.sent[1][2] == "rid-1" and "stop" in c.sent[1][1]
    c.callback(FakeResult([], "cancelled"), None)
    assert s.next(1).finish_reason == "cancelled" and s.ended
    assert s.next(0.01) is None
    s.close()
    assert c.stopped and c.closed


def test_stream_error_is_an_engine_error(client):
    s = GrpcEngineStream("x:1", "llm_engine", {"input_ids": np.zeros((1, 2), np.int32)}, "r")
    s.start()
    client[0].callback(None, InferenceServerException("boom"))
    with pytest.raises(EngineStreamError, match="boom"):
        s.next(1)
    assert s.ended


def test_unreachable_engine_names_the_setting(monkeypatch):
    def refuse(url):
        raise InferenceServerException("connection refused")

    monkeypatch.setattr(engine_streams.grpcclient, "InferenceServerClient", refuse)
    s = GrpcEngineStream("nowhere:1", "llm_engine", {}, "r")
    with pytest.raises(EngineStreamError, match="engine_url"):
        s.start()


def test_queued_responses_merge_into_one_chunk_and_an_error_follows(client):
    s = GrpcEngineStream("x:1", "llm_engine", {"input_ids": np.zeros((1, 2), np.int32)}, "r")
    s.start()
    cb = client[0].callback
    cb(FakeResult([1]), None)
    cb(FakeResult([2, 3]), None)
    cb(None, InferenceServerException("late failure"))
    chunk = s.next(1)
    assert chunk.tokens == [1, 2, 3] and not chunk.final and not s.ended
    with pytest.raises(EngineStreamError, match="late failure"):
        s.next(1)
    s2 = GrpcEngineStream("x:1", "llm_engine", {"input_ids": np.zeros((1, 2), np.int32)}, "r")
    s2.start()
    for r in (FakeResult([4]), FakeResult([5], "length"), FakeResult([9])):
        client[1].callback(r, None)
    last = s2.next(1)
    assert last.tokens == [4, 5] and last.finish_reason == "length" and s2.ended
