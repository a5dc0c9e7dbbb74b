"""Incremental detokenization: deltas add up to tokenizer.decode exactly (property tests)."""

from __future__ import annotations

import random

import pytest
from llm_text_fixtures import MULTIBYTE, tiny_tokenizer

from uip.llm.detokenize import IncrementalDetokenizer, StreamDetokenizers, decode_stream


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True)


def random_chunks(rng: random.Random, ids: list[int]) -> list[list[int]]:
    """Split ids into chunks of 1..4 (engine responses carry one or more tokens)."""
    out, i = [], 0
    while i < len(ids):
        n = rng.choice([1, 1, 1, 2, 3, 4])
        out.append(ids[i:i + n])
        i += n
    return out


def test_the_data_has_split_characters(tok):
    """Guard: token-by-token decoding really breaks on these texts, so the tests below bite."""
    broken = 0
    for text in MULTIBYTE:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        naive = "".join(decode(tok, [i]) for i in ids)
        broken += naive != decode(tok, ids)
    assert broken >= 3


@pytest.mark.parametrize("text", MULTIBYTE + ["Hello world, how are you?", " leading space",
                                              "tabs\tand\nnewlines  double  spaces"])
def test_token_by_token_equals_decode_and_never_splits_a_character(tok, text):
    ids = tok(text)["input_ids"]  # with BOS: a special token, skipped
    deltas = decode_stream(tok, [[i] for i in ids])
    assert "".join(deltas) == decode(tok, ids) == text
    assert all("\ufffd" not in d for d in deltas)  # no half characters on the way


def test_spaces_stay_with_their_words(tok):
    ids = tok("Hello world again", add_special_tokens=False)["input_ids"]
    deltas = [d for d in decode_stream(tok, [[i] for i in ids]) if d]
    assert "".join(deltas) == "Hello world again"
    assert any(d.startswith(" ") for d in deltas[1:])


def test_random_ids_property(tok):
    """Random ids (invalid UTF-8, special tokens, replacement chars) in random chunks."""
    rng = random.Random(1234)
    vocab = len(tok)
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        deltas = decode_stream(tok, random_chunks(rng, ids))
        assert "".join(deltas) == decode(tok, ids), ids


def test_random_text_property(tok):
    """Random mixes of multi-byte text: exact, and no replacement character ever emitted."""
    rng = random.Random(7)
    words = " ".join(MULTIBYTE).split() + ["the", "model", "is", "fast", "12", "!"]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        deltas = decode_stream(tok, random_chunks(rng, ids))
        assert "".join(deltas) == text
        assert all("\ufffd" not in d for d in deltas)


def test_trailing_incomplete_character_is_flushed_as_replacement(tok):
    ids = tok("東京", add_special_tokens=False)["input_ids"]
    cut = ids[:-1]  # the stream ends in the middle of a character
    assert decode(tok, cut).endswith("\ufffd")
    d = IncrementalDetokenizer(tok)
    held = "".join(d.add([i]) for i in cut)
    assert not held.endswith("\ufffd") and d.pending
    assert held + d.finish() == decode(tok, cut)
    assert not d.pending


def test_special_tokens_are_skipped(tok):
    ids = tok("Hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert "".join(decode_stream(tok, [[i] for i in ids])) == "Hi there"


def test_stream_table_keeps_interleaved_streams_apart(tok):
    rng = random.Random(3)
    table = StreamDetokenizers(tok)
    texts = {f"req-{i}": rng.choice(MULTIBYTE) + " " + rng.choice(MULTIBYTE) for i in range(6)}
    pending = {k: [[i] for i in tok(t, add_special_tokens=False)["input_ids"]]
               for k, t in texts.items()}
    got = {k: "" for k in texts}
    while pending:
        key = rng.choice(sorted(pending))
        chunk = pending[key].pop(0)
        final = not pending[key]
        got[key] += table.step(key, chunk, final)
        if final:
            del pending[key]
    assert got == texts
    assert table.streams == {}  # finished streams leave no state behind


def test_stream_table_one_shot_and_expiry(tok):
    now = [0.0]
    table = StreamDetokenizers(tok, ttl_s=10.0, clock=lambda: now[0])
    ids = tok("café 東京", add_special_tokens=False)["input_ids"]
    assert table.step("", ids, final=True) == "café 東京"  # one response: decoded on its own
    assert table.streams == {}
    table.step("dead", ids[:2], final=False)  # a stream whose end never comes
    assert "dead" in table.streams
    now[0] = 100.0
    table.step("other", ids[:1], final=False)
    assert "dead" not in table.streams and "other" in table.streams
