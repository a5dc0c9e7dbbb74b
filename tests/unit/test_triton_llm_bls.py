"""The llm_bls adapter over a fake EngineStream (error codes passed through or mapped, client
cancel), and BlsEngineStream over the stand-in BLS (chunks merged, errors, stop once)."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
from support import fake_pb_utils as pbu

from uip.llm.engine_tensors import EngineChunk, decode_request, encode_response
from uip.llm.orchestrate import EngineStreamError
from uip.triton.engine_streams import BlsEngineStream, GrpcEngineStream
from uip.triton.models.llm_bls import LlmBlsModel

FINAL = pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL
TIMEOUT_S = 10.0  # generous: only a failing test waits this long


def wait_until(cond, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def finished(request):
    wait_until(lambda: request.sender.finished)
    time.sleep(0.02)  # nothing may follow the FINAL response
    return request.sender.sent


# --- the adapter -----------------------------------------------------------------------------


class FakeEngineStream:
    """Plays `chunks` (EngineChunk, or an exception to raise) one per `next`; then waits.
    After `stop()` it ends with a 'cancelled' chunk, as llm_engine does."""

    def __init__(self, inputs, chunks=(), hold=False):
        self.inputs = inputs
        self.items = list(chunks)
        self.hold = hold  # True: after the chunks, wait (for a stop) instead of ending
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
            self.ended = isinstance(item, EngineStreamError)  # as _QueuedStream marks it
            raise item
        self.ended = item.final
        return item

    def stop(self):
        self.stops += 1
        self._stopped.set()

    def close(self):
        self.closes += 1


@pytest.fixture(scope="module")
def bls_config(llm_tiny_dir):
    return pbu.repository_config("llm_bls", artifact=str(llm_tiny_dir), cancel_poll_s="0.01")


@pytest.fixture
def model(bls_config):
    m = LlmBlsModel()
    m.initialize(pbu.model_args(bls_config))
    m.streams = []
    yield m
    m.finalize()


def use(model, monkeypatch, *chunks, hold=False):
    """Make the model's next engine streams play `chunks` (one list per stream)."""
    scripts = [list(c) for c in chunks]

    def engine(self, inputs):
        s = FakeEngineStream(inputs, scripts.pop(0) if scripts else [], hold=hold)
        self.streams.append(s)
        return s

    monkeypatch.setattr(LlmBlsModel, "_engine", engine)


def client_request(text="hello world", **extra):
    inputs = {"text_input": np.array([[text.encode()]], dtype=object)}
    for k, v in extra.items():
        dtype = object if isinstance(v, bytes) else type(v)
        inputs[k] = np.array([[v]], dtype=dtype if dtype is not int else np.int32)
    return pbu.Request(inputs)


def only_error(request):
    sent = finished(request)
    assert len(sent) == 1
    resp, flags = sent[0]
    assert flags == FINAL and resp.has_error()
    return resp.error()


def texts(sent):
    out = []
    for resp, flags in sent:
        assert not resp.has_error()
        o = resp.outputs()
        out.append((o["text_output"][0, 0].decode(), o["finish_reason"][0, 0].decode(), flags))
    return out


def test_initialize_reads_the_spec(model, llm_tiny_dir):
    assert model.engine_model == "llm_engine" and model.transport == "grpc"
    assert model.poll_s == 0.01 and model.pre.limits.max_tokens == 1024
    assert model.settings.artifact == llm_tiny_dir


def test_engine_transport_picks_the_stream(bls_config, monkeypatch):
    monkeypatch.setenv("UIP_GRPC_URL", "localhost:4242")
    m = LlmBlsModel()
    m.initialize(pbu.model_args(bls_config))
    s = m._engine({"input_ids": np.array([[1]], dtype=np.int32)})
    assert isinstance(s, GrpcEngineStream) and s.url == "localhost:4242"
    assert s.model == "llm_engine" and s.request_id.startswith("llm_bls-")
    m.transport = "bls"
    s2 = m._engine({"input_ids": np.array([[1]], dtype=np.int32)})
    assert isinstance(s2, BlsEngineStream) and s2.request_id != s.request_id


def test_initialize_refuses_an_unknown_transport(bls_config):
    config = {**bls_config, "parameters": {**bls_config["parameters"],
                                           "engine_transport": {"string_value": "http"}}}
    with pytest.raises(ValueError, match="engine_transport"):
        LlmBlsModel().initialize(pbu.model_args(config))


def test_streams_text_from_the_engine(model, monkeypatch):
    ids = model.tokenizer.encode(" hello world", add_special_tokens=False)
    use(model, monkeypatch, [EngineChunk([i]) for i in ids[:-1]] + [EngineChunk(ids[-1:],
                                                                                "length")])
    request = client_request("say", stream=True, max_tokens=len(ids))
    model.execute([request])
    out = texts(finished(request))
    assert "".join(t for t, _, _ in out) == " hello world"
    assert out[-1][1:] == ("length", FINAL) and all(f == 0 for _, _, f in out[:-1])
    (engine,) = model.streams
    call = decode_request(engine.inputs, max_tokens=1024)
    assert call.request.input_ids == model.tokenizer("say")["input_ids"]
    assert call.request.streaming and call.request.max_new_tokens == len(ids)
    assert engine.started == 1 and engine.stops == 0 and engine.closes == 1


def test_engine_triton_error_passes_through_with_its_code(model, monkeypatch):
    err = pbu.TritonError("llm_engine is overloaded", pbu.TritonError.UNAVAILABLE)
    use(model, monkeypatch, [EngineChunk([5]), EngineStreamError("llm_engine: overloaded", err)])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got is err
    assert got.code() == pbu.TritonError.UNAVAILABLE
    (engine,) = model.streams
    assert engine.stops == 0 and engine.closes == 1  # the engine ended it already


def test_engine_invalid_arg_passes_through(model, monkeypatch):
    err = pbu.TritonError("'request_output_len' must be <= 16", pbu.TritonError.INVALID_ARG)
    use(model, monkeypatch, [EngineStreamError(err.message(), err)])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INVALID_ARG and got.message() == err.message()


def test_transport_error_without_a_triton_error_is_internal(model, monkeypatch):
    use(model, monkeypatch, [EngineStreamError("cannot reach llm_engine at localhost:1")])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL
    assert got.message() == "EngineStreamError: cannot reach llm_engine at localhost:1"


def test_other_failure_is_internal_and_stops_the_engine(model, monkeypatch):
    use(model, monkeypatch, [EngineChunk([5]), RuntimeError("detokenizer broke")])
    request = client_request()
    model.execute([request])
    got = only_error(request)
    assert got.code() == pbu.TritonError.INTERNAL
    assert got.message() == "RuntimeError: detokenizer broke"
    (engine,) = model.streams
    assert engine.stops == 1 and engine.closes == 1


@pytest.mark.parametrize("request_, message", [
    (pbu.Request({}), "input 'text_input' is required"),
    (client_request(max_tokens=1025), "1025"),
    (client_request(temperature=np.float32(-1.0)), "temperature"),
])
def test_bad_client_input_is_invalid_arg_without_an_engine_call(model, monkeypatch, request_,
                                                                message):
    use(model, monkeypatch)
    model.execute([request_])
    got = only_error(request_)
    assert got.code() == pbu.TritonError.INVALID_ARG and message in got.message()
    assert model.streams == []


def test_one_bad_request_does_not_fail_the_others(model, monkeypatch):
    ids = model.tokenizer.encode(" ok", add_special_tokens=False)
    use(model, monkeypatch, [EngineChunk(ids, "length")])
    bad, good = pbu.Request({}), client_request()
    model.execute([bad, good])
    assert only_error(bad).code() == pbu.TritonError.INVALID_ARG
    assert texts(finished(good)) == [(" ok", "length", FINAL)]


def test_client_cancel_stops_the_engine_stream_and_ends_cancelled(model, monkeypatch):
    ids = model.tokenizer.encode(" hello", add_special_tokens=False)
    use(model, monkeypatch, [EngineChunk(ids)], hold=True)
    request = client_request(stream=True)
    model.execute([request])
    wait_until(lambda: len(request.sender.sent) == 1)  # the first delta
    assert not request.sender.finished
    request.cancelled = True
    out = texts(finished(request))
    assert out[0] == (" hello", "", 0)
    assert out[-1][1:] == ("cancelled", FINAL) and len(out) == 2
    (engine,) = model.streams
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
