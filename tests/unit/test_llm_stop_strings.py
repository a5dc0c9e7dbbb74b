"""Stop strings with OpenAI semantics over streamed text, and llm_bls's text pipeline."""

from __future__ import annotations

import random

import pytest
from llm_text_fixtures import tiny_tokenizer

from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import TextPipeline
from uip.llm.preprocess import LlmRequest
from uip.llm.stop_strings import StopStringMatcher


def run_matcher(stops, deltas):
    m = StopStringMatcher(stops)
    out, stopped = [], False
    for d in deltas:
        check = m.feed(d)
        out.append(check.text)
        if check.stopped:
            stopped = True
            break
    if not stopped:
        out.append(m.finish())
    return out, stopped


def test_stop_in_one_delta():
    out, stopped = run_matcher(["END"], ["hello END world"])
    assert "".join(out) == "hello " and stopped


def test_stop_spanning_deltas_is_never_partly_emitted():
    out, stopped = run_matcher(["STOP"], ["abc S", "T", "O", "P tail"])
    assert stopped and "".join(out) == "abc "
    assert out[:4] == ["abc ", "", "", ""]  # 'S', 'T', 'O' held back while unresolved


def test_false_start_is_released():
    out, stopped = run_matcher(["STOP"], ["abc ST", "AR"])
    assert not stopped and "".join(out) == "abc STAR"
    assert out[0] == "abc "  # 'ST' was held until 'A' ruled the stop out


def test_held_text_is_released_at_the_end():
    out, stopped = run_matcher(["\n\n"], ["line\n"])
    assert not stopped and out == ["line", "\n"]


def test_earliest_stop_wins_and_overlaps():
    assert "".join(run_matcher(["world", "lo w"], ["hello world"])[0]) == "hel"
    assert "".join(run_matcher(["aab"], ["a", "a", "a", "b"])[0]) == "a"


def test_stop_at_the_start_gives_empty_output():
    out, stopped = run_matcher(["Hi"], ["H", "i there"])
    assert stopped and "".join(out) == ""


def test_no_or_empty_stops_pass_everything_through():
    for stops in ([], [""]):
        m = StopStringMatcher(stops)
        assert m.feed("abc").text == "abc" and m.finish() == ""


def test_random_property():
    rng = random.Random(5)
    alphabet = "ab c\n東😀"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4)))
                 for _ in range(rng.randrange(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 6))))
        deltas = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
        out, stopped = run_matcher(stops, deltas)
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        want = text[:min(hits)] if hits else text
        assert "".join(out) == want and stopped == bool(hits), (text, stops, deltas)
        # nothing emitted is ever taken back: every prefix of the output is a prefix of want
        assert want.startswith("".join(out))


# ------------------------------------------------------------------------- TextPipeline


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def request(tok, prompt="Hi", **kw) -> LlmRequest:
    return LlmRequest(prompt=prompt, input_ids=tok(prompt)["input_ids"], max_tokens=64, **kw)


def feed_all(pipe, chunks, reason="length"):
    out = []
    for i, c in enumerate(chunks):
        r = pipe.feed(EngineChunk(c, reason if i == len(chunks) - 1 else None))
        if r is not None:
            out.append(r)
        if pipe.done:
            break
    return out


def test_pipeline_stop_string_spanning_tokens(tok):
    text = "the model is fast 東京 and the cache is warm"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(tok, request(tok, stream=True, stop_words=["京 and"]))
    out = feed_all(pipe, [[i] for i in ids])
    assert "".join(r.text for r in out) == "the model is fast 東"
    assert out[-1].finish_reason == "stop" and pipe.stopped_by_string
    assert all(r.finish_reason is None for r in out[:-1])
    assert sum(r.num_output_tokens for r in out) < len(ids)  # ended before the engine did


def test_pipeline_not_streaming_sends_one_response(tok):
    text = "naïve café 😀 and more"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(tok, request(tok, stream=False))
    out = feed_all(pipe, [[i] for i in ids], reason="length")
    assert len(out) == 1 and out[0].text == text and out[0].finish_reason == "length"
    assert out[0].num_output_tokens == len(ids)


def test_pipeline_echoes_the_prompt_first(tok):
    ids = tok(" and then", add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(tok, request(tok, prompt="Once", stream=True,
                                     exclude_input_in_output=False))
    out = feed_all(pipe, [[i] for i in ids], reason="stop")
    assert out[0].text.startswith("Once")
    assert "".join(r.text for r in out) == "Once and then"
    assert sum(r.num_output_tokens for r in out) == len(ids)


def test_pipeline_stop_string_found_only_in_the_flush(tok):
    ids = tok("abc 東", add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(tok, request(tok, stream=True, stop_words=["c 東"]))
    out = feed_all(pipe, [[i] for i in ids], reason="length")
    assert "".join(r.text for r in out) == "ab" and out[-1].finish_reason == "stop"


def test_pipeline_cancel_ends_with_what_was_resolved(tok):
    ids = tok("one two three", add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(tok, request(tok, stream=True))
    sent = [r for r in (pipe.feed(EngineChunk([i])) for i in ids[:2]) if r]
    last = pipe.cancel()
    assert last.finish_reason == "cancelled" and pipe.done
    assert "".join(r.text for r in sent + [last]) == tok.decode(ids[:2])
