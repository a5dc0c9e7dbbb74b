"""llm_bls's request loop against a fake engine: stop strings and cancels stop the engine."""

from __future__ import annotations

import queue

import pytest
from llm_text_fixtures import tiny_tokenizer

from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import EngineStreamError, TextPipeline, drain, run
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


def test_drain_gives_up_after_timeout():
    class Silent:
        def next(self, timeout):
            return None

    assert drain(Silent(), timeout=0.05) is False
