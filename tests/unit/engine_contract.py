"""Contract tests of the `Engine` interface, shared by every `llm_engine` runtime.

Use: subclass `EngineContract` in a test module and provide two fixtures,
- `engine`: a running `Engine` (module scope is fine: every test leaves it idle);
- `prompts`: at least 8 short prompts (lists of token ids valid for that engine) whose greedy
  continuations do not end early (no end-of-sequence within `N` tokens), e.g.
      class TestTrtllmEngine(EngineContract):
          @pytest.fixture(scope="class")
          @classmethod
          def engine(cls): ...
The tests only use the interface: greedy determinism (alone == in a batch), streaming (one
result per token), non-streaming (one final result), cancel, seeds, stop/bad words, end_id,
max_new_tokens, validation and stats.
"""

from __future__ import annotations

import threading
import time

import pytest

from uip.core.inputs import InvalidInput
from uip.llm.engine import Engine, GenerationRequest, GenerationResult, SamplingParams

N = 16  # new tokens per request in these tests: short keeps the suite fast
DEADLINE_S = 60.0


def collect(engine: Engine, rid: int, timeout: float = DEADLINE_S) -> list[GenerationResult]:
    """All results of a request up to its final one (fails after `timeout` seconds)."""
    out: list[GenerationResult] = []
    deadline = time.monotonic() + timeout
    while not (out and out[-1].is_final):
        assert time.monotonic() < deadline, f"request {rid} did not finish in {timeout} s"
        out.extend(engine.await_responses(rid, timeout=0.5))
    assert all(not r.is_final for r in out[:-1]), "results after the final one"
    assert all(r.request_id == rid for r in out)
    return out


def tokens_of(results: list[GenerationResult]) -> list[int]:
    return [t for r in results for t in r.tokens]


def run(engine: Engine, prompt: list[int], n: int = N, **kw) -> list[GenerationResult]:
    rid = engine.enqueue(GenerationRequest(input_ids=list(prompt), max_new_tokens=n, **kw))
    return collect(engine, rid)


def run_concurrently(engine: Engine, requests: list[GenerationRequest]
                     ) -> list[list[GenerationResult]]:
    rids = [engine.enqueue(r) for r in requests]
    results: list = [None] * len(rids)

    def wait(i: int) -> None:
        results[i] = collect(engine, rids[i])

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(rids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 5)
    assert all(r is not None for r in results), "a request did not finish"
    return results


def wait_idle(engine: Engine, timeout: float = 5.0):
    """Stats once no sequence is active or queued and no KV block is held."""
    deadline = time.monotonic() + timeout
    while True:
        s = engine.stats()
        if s.active_requests == 0 and s.queued_requests == 0 and s.kv_blocks_used == 0:
            return s
        assert time.monotonic() < deadline, f"engine not idle after {timeout} s: {s}"
        time.sleep(0.01)


def first_match_end(tokens: list[int], word: list[int]) -> int:
    """Index just past the first occurrence of `word` in `tokens` (-1 if absent)."""
    for end in range(len(word), len(tokens) + 1):
        if tokens[end - len(word):end] == word:
            return end
    return -1


class EngineContract:
    @pytest.fixture(scope="class")
    @classmethod
    def greedy(cls, engine, prompts) -> list[list[int]]:
        """Each prompt's greedy continuation, run alone."""
        out = []
        for p in prompts:
            results = run(engine, p, streaming=False)
            assert results[-1].finish_reason == "length", "pick prompts that do not hit EOS"
            out.append(tokens_of(results))
        return out

    def test_streaming_gives_one_result_per_token(self, engine, prompts, greedy):
        results = run(engine, prompts[0], streaming=True)
        assert len(results) == N
        assert all(len(r.tokens) == 1 for r in results)
        assert [r.finish_reason for r in results[:-1]] == [None] * (N - 1)
        assert results[-1].finish_reason == "length"
        assert tokens_of(results) == greedy[0]

    def test_non_streaming_gives_one_final_result(self, engine, prompts, greedy):
        results = run(engine, prompts[1], streaming=False)
        assert len(results) == 1 and results[0].is_final
        assert results[0].tokens == greedy[1] and len(greedy[1]) == N
        assert results[0].finish_reason == "length"

    def test_max_new_tokens_is_exact(self, engine, prompts, greedy):
        for n in (1, 3):
            results = run(engine, prompts[2], n=n, streaming=True)
            assert tokens_of(results) == greedy[2][:n]
            assert results[-1].finish_reason == "length"

    def test_greedy_alone_equals_greedy_in_a_batch(self, engine, prompts, greedy):
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N, streaming=i % 2 == 0)
                for i, p in enumerate(prompts[:8])]
        for i, results in enumerate(run_concurrently(engine, reqs)):
            assert tokens_of(results) == greedy[i], f"prompt {i} differs in a batch"
            assert results[-1].finish_reason == "length"

    def test_requests_added_mid_flight(self, engine, prompts, greedy):
        first = [engine.enqueue(GenerationRequest(input_ids=p, max_new_tokens=N))
                 for p in prompts[:4]]
        got: dict[int, list[GenerationResult]] = {r: [] for r in first}
        while not all(len(v) >= 3 for v in got.values()):  # the first ones are decoding
            for r, v in got.items():
                if not (v and v[-1].is_final):
                    v.extend(engine.await_responses(r, timeout=0.05))
        later = [engine.enqueue(GenerationRequest(input_ids=p, max_new_tokens=N))
                 for p in prompts[4:8]]
        for i, rid in enumerate(first):
            done = got[rid][-1].is_final
            results = got[rid] + ([] if done else collect(engine, rid))
            assert tokens_of(results) == greedy[i]
        for i, rid in enumerate(later):
            assert tokens_of(collect(engine, rid)) == greedy[4 + i]

    def test_await_any_reads_every_request(self, engine, prompts, greedy):
        """One reader for all requests (the serving side's dispatcher): every result exactly
        once, in order per request, whatever mix of streaming and not."""
        rids = [engine.enqueue(GenerationRequest(input_ids=p, max_new_tokens=N,
                                                 streaming=i % 2 == 0))
                for i, p in enumerate(prompts[:8])]
        got: dict[int, list[GenerationResult]] = {r: [] for r in rids}
        deadline = time.monotonic() + DEADLINE_S
        while not all(v and v[-1].is_final for v in got.values()):
            assert time.monotonic() < deadline, "await_any did not deliver every final result"
            for r in engine.await_any(timeout=0.5):
                assert not (got[r.request_id] and got[r.request_id][-1].is_final)
                got[r.request_id].append(r)
        for i, rid in enumerate(rids):
            assert tokens_of(got[rid]) == greedy[i]
            assert len(got[rid]) == (N if i % 2 == 0 else 1)
        assert engine.await_any(timeout=0.05) == []

    def test_cancel_ends_the_request_and_frees_its_slot(self, engine, prompts, greedy):
        rid = engine.enqueue(GenerationRequest(input_ids=prompts[3], max_new_tokens=1000,
                                               streaming=True))
        seen: list[GenerationResult] = []
        while len(tokens_of(seen)) < 2:
            seen.extend(engine.await_responses(rid, timeout=1.0))
        engine.cancel(rid)
        rest = collect(engine, rid, timeout=5.0)
        assert rest[-1].finish_reason == "cancelled"
        got = tokens_of(seen + rest)
        assert len(got) < 50, "generation went on after the cancel"
        assert got[:N] == greedy[3][:len(got)]
        engine.cancel(rid)  # cancelling a finished request is a no-op
        wait_idle(engine)
        # the engine serves the next request normally
        assert tokens_of(run(engine, prompts[0], streaming=False)) == greedy[0]

    def test_cancel_of_a_non_streaming_request(self, engine, prompts):
        rid = engine.enqueue(GenerationRequest(input_ids=prompts[4], max_new_tokens=1000,
                                               streaming=False))
        time.sleep(0.05)
        engine.cancel(rid)
        results = collect(engine, rid, timeout=5.0)
        assert len(results) == 1 and results[0].finish_reason == "cancelled"
        wait_idle(engine)

    def test_same_seed_same_tokens(self, engine, prompts):
        sp = SamplingParams(temperature=1.0, top_p=0.95, top_k=100, seed=1234)
        a = tokens_of(run(engine, prompts[0], sampling=sp))
        b = tokens_of(run(engine, prompts[0], sampling=sp))
        c = tokens_of(run(engine, prompts[0], sampling=SamplingParams(
            temperature=1.0, top_p=0.95, top_k=100, seed=4321)))
        assert a == b
        assert a != c

    def test_temperature_zero_and_top_k_one_are_greedy(self, engine, prompts, greedy):
        for sp in (SamplingParams(temperature=0.0, seed=5), SamplingParams(top_k=1, seed=5),
                   SamplingParams(temperature=0.7, top_k=1, seed=5)):
            assert tokens_of(run(engine, prompts[5], sampling=sp)) == greedy[5], sp

    def test_stop_words_end_the_output(self, engine, prompts, greedy):
        ref = greedy[6]
        word = ref[5:7]
        end = first_match_end(ref, word)
        results = run(engine, prompts[6], stop_words=[word], streaming=True)
        assert tokens_of(results) == ref[:end]
        assert results[-1].finish_reason == "stop"
        wait_idle(engine)

    def test_end_id_ends_the_output(self, engine, prompts, greedy):
        ref = greedy[7]
        end = ref.index(ref[4]) + 1
        results = run(engine, prompts[7], end_id=ref[4], streaming=False)
        assert tokens_of(results) == ref[:end]
        assert results[-1].finish_reason == "stop"

    def test_bad_words_are_never_produced(self, engine, prompts, greedy):
        ref = greedy[1]
        banned = sorted(set(ref[:4]))
        got = tokens_of(run(engine, prompts[1], bad_words=[[t] for t in banned]))
        assert len(got) == N
        assert not set(got) & set(banned)
        # a two-token bad word bans its last token only after its first
        got2 = tokens_of(run(engine, prompts[1], bad_words=[[ref[0], ref[1]]]))
        assert got2[0] == ref[0] and got2[1] != ref[1]

    def test_invalid_requests_are_refused(self, engine, prompts):
        with pytest.raises(InvalidInput):
            engine.enqueue(GenerationRequest(input_ids=[], max_new_tokens=4))
        with pytest.raises(InvalidInput):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=0))
        with pytest.raises(InvalidInput):
            engine.enqueue(GenerationRequest(input_ids=[10**9], max_new_tokens=4))
        with pytest.raises(InvalidInput):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=4,
                                             sampling=SamplingParams(temperature=-1.0)))
        with pytest.raises(InvalidInput):
            engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=10**7))

    def test_unknown_request_id(self, engine):
        with pytest.raises(KeyError):
            engine.await_responses(987_654_321, timeout=0.01)
        engine.cancel(987_654_321)  # no-op

    def test_stats(self, engine, prompts):
        before = engine.stats()
        assert before.kv_blocks_total > 0
        rid = engine.enqueue(GenerationRequest(input_ids=prompts[2], max_new_tokens=1000))
        seen = []
        while len(tokens_of(seen)) < 2:
            seen.extend(engine.await_responses(rid, timeout=1.0))
        during = engine.stats()
        assert during.active_requests == 1
        assert during.kv_blocks_used >= 1
        assert during.tokens_generated >= before.tokens_generated + 2
        engine.cancel(rid)
        collect(engine, rid)
        after = wait_idle(engine)
        assert after.tokens_generated >= during.tokens_generated
