"""llm_bls's request logic against a fake engine: `run` (one request on the calling thread) and
`RequestRun` (the step-able state machine llm_bls's driver advances): stop strings and cancels
stop the engine, the cancelled response waits for the engine's end (or the drain timeout),
errors propagate while the client waits and are the engine's last word otherwise."""

from __future__ import annotations

import queue

import pytest
from llm_text_fixtures import tiny_tokenizer

from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import EngineStreamError, RequestRun, TextPipeline, run
from uip.llm.preprocess import LlmRequest


class FakeEngine:
    """Streams the given chunks; after stop(), ends with a 'cancelled' chunk like llm_engine."""

    def __init__(self, chunks, reason="length", fail_at=None):
        self.q: queue.Queue = queue.Queue()
        self.chunks, self.reason, self.fail_at = chunks, reason, fail_at
        self.started = self.stops = 0
        self.sent = 0

    def start(self):
        self.started += 1

    def next(self, timeout):
        if self.stops:
            return EngineChunk([], "cancelled")
        if self.fail_at is not None and self.sent == self.fail_at:
            raise EngineStreamError("boom")
        if self.sent >= len(self.chunks):
            return None
        self.sent += 1
        final = self.sent == len(self.chunks)
        return EngineChunk(self.chunks[self.sent - 1], self.reason if final else None)

    def stop(self):
        self.stops += 1


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def setup(tok, text, **kw):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    req = LlmRequest(prompt="p", input_ids=[0, 5], max_tokens=64, **kw)
    return ids, TextPipeline(tok, req)


def test_runs_to_the_engine_end(tok):
    ids, pipe = setup(tok, "hello 東京 world", stream=True)
    eng, sent = FakeEngine([[i] for i in ids]), []
    assert run(pipe, eng, sent.append, lambda: False, poll_s=0.001) == "length"
    assert "".join(r.text for r in sent) == "hello 東京 world"
    assert eng.started == 1 and eng.stops == 0 and sent[-1].final


def test_stop_string_stops_the_engine(tok):
    ids, pipe = setup(tok, "hello 東京 world and more words", stream=True,
                      stop_words=[" world"])
    eng, sent = FakeEngine([[i] for i in ids]), []
    assert run(pipe, eng, sent.append, lambda: False, poll_s=0.001) == "stop"
    assert "".join(r.text for r in sent) == "hello 東京"
    assert eng.stops == 1 and eng.sent < len(ids)


def test_client_cancel_stops_the_engine(tok):
    ids, pipe = setup(tok, "a b c d e f g h", stream=True)
    eng, sent = FakeEngine([[i] for i in ids]), []
    calls = iter([False, False, False, True])
    assert run(pipe, eng, sent.append, lambda: next(calls), poll_s=0.001) == "cancelled"
    assert eng.stops == 1 and sent[-1].finish_reason == "cancelled"


def test_engine_error_propagates(tok):
    ids, pipe = setup(tok, "a b c", stream=True)
    with pytest.raises(EngineStreamError):
        run(pipe, FakeEngine([[i] for i in ids], fail_at=1), lambda r: None, lambda: False,
            poll_s=0.001)


def test_run_gives_up_draining_after_drain_s(tok):
    class Silent(FakeEngine):
        def next(self, timeout):
            return None  # never confirms the stop

    ids, pipe = setup(tok, "a b", stream=True)
    eng, sent = Silent([[i] for i in ids]), []
    assert run(pipe, eng, sent.append, lambda: True, poll_s=0.001, drain_s=0.05) == "cancelled"
    assert eng.stops == 1 and [r.finish_reason for r in sent] == ["cancelled"]


def chunks(tok, text, reason="length"):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [EngineChunk([i], reason if k == len(ids) - 1 else None) for k, i in enumerate(ids)]


def machine(tok, drain_s=30.0, **kw):
    _, pipe = setup(tok, "x", stream=True, **kw)
    sent, stops = [], []
    return RequestRun(pipe, sent.append, lambda: stops.append(1), drain_s=drain_s), sent, stops


def test_request_run_to_the_engine_end(tok):
    r, sent, stops = machine(tok)
    for c in chunks(tok, "hello 東京 world"):
        assert not r.finished
        r.on_chunk(c, 0.0)
    assert r.finished and r.finish_reason == "length" and r.client_done and r.engine_ended
    assert "".join(x.text for x in sent) == "hello 東京 world" and stops == []
    r.on_chunk(EngineChunk([], "cancelled"), 1.0)  # nothing after the end
    assert len([x for x in sent if x.final]) == 1


def test_request_run_stop_string_drains_until_the_engine_confirms(tok):
    r, sent, stops = machine(tok, stop_words=[" world"])
    for c in chunks(tok, "hello world and more")[:-1]:
        r.on_chunk(c, 0.0)
    assert r.state == RequestRun.DRAINING and r.client_done and not r.finished
    assert "".join(x.text for x in sent) == "hello" and sent[-1].finish_reason == "stop"
    assert stops == [1]
    r.on_tick(29.0)
    assert not r.finished
    n = len(sent)
    r.on_chunk(EngineChunk([], "cancelled"), 1.0)
    assert r.finished and r.finish_reason == "stop" and stops == [1] and len(sent) == n


def test_request_run_cancel_answers_after_the_engine_end(tok):
    r, sent, stops = machine(tok)
    r.on_chunk(chunks(tok, "hello world")[0], 0.0)
    n = len(sent)
    r.on_cancel(0.0)
    r.on_cancel(0.0)
    assert stops == [1] and r.state == RequestRun.CANCELLING and len(sent) == n
    r.on_chunk(EngineChunk([7]), 0.1)  # still in flight: dropped
    assert len(sent) == n and not r.finished
    r.on_chunk(EngineChunk([], "cancelled"), 0.2)
    assert r.finished and sent[-1].finish_reason == "cancelled" and r.finish_reason == "cancelled"


def test_request_run_cancel_gives_up_waiting_after_drain_s(tok):
    r, sent, stops = machine(tok, drain_s=5.0)
    r.on_cancel(10.0)
    r.on_tick(14.9)
    assert not r.finished and sent == []
    r.on_tick(15.0)
    assert r.finished and [x.finish_reason for x in sent] == ["cancelled"] and stops == [1]


def test_request_run_error_raises_while_running_and_ends_a_drain(tok):
    r, sent, stops = machine(tok)
    r.on_chunk(chunks(tok, "a b")[0], 0.0)
    with pytest.raises(EngineStreamError, match="boom"):
        r.on_error(EngineStreamError("boom"), 0.0)
    assert r.finished and r.engine_ended and not r.client_done
    r.abandon()
    assert stops == []  # the engine ended it: nothing to stop
    r2, sent2, stops2 = machine(tok)
    r2.on_cancel(0.0)
    r2.on_error(EngineStreamError("stream broke"), 0.1)  # the engine's last word: no raise
    assert r2.finished and [x.finish_reason for x in sent2] == ["cancelled"]


def test_request_run_abandon_stops_a_running_engine_once(tok):
    r, sent, stops = machine(tok)
    r.abandon()
    r.abandon()
    assert r.finished and stops == [1] and sent == []
