"""Incremental detokenization: token ids in, text deltas out (pure).

The contract: for any split of the generated ids into chunks, the concatenated deltas equal
`tokenizer.decode(all_ids, skip_special_tokens=True)` exactly, replacement characters
included. Token-by-token decoding breaks this in two ways: a UTF-8 character spread over
several byte-level tokens decodes to U+FFFD pieces, and SentencePiece-style decoders drop the
leading space of the first token they see. So a delta is the difference between the decode of
a short window (`prefix_offset:`) and the decode of the same window without the new tokens,
and text that still ends in U+FFFD (possibly an incomplete character) is held back until a
later token completes it or the sequence ends (`finish`), which flushes exactly what the full
decode has beyond what was already emitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Per-request state: the ids so far, the decode window and the text emitted so far."""

    __slots__ = ("tokenizer", "skip_special_tokens", "ids", "prefix_offset", "read_offset",
                 "emitted")

    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # ids before this are reflected in `emitted`
        self.emitted = 0  # characters emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, new_ids: list[int]) -> str:
        """Take the next ids; return the text they complete (may be empty)."""
        if not new_ids:
            return ""
        self.ids.extend(int(i) for i in new_ids)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith(REPLACEMENT) and text.startswith(prefix):
            delta = text[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.emitted += len(delta)
            return delta
        return ""

    def finish(self) -> str:
        """The rest of the text once the sequence has ended (flushes held-back bytes)."""
        full = self._decode(self.ids)
        delta = full[self.emitted:]
        self.emitted = len(full)
        self.prefix_offset = self.read_offset = len(self.ids)
        return delta

    @property
    def pending(self) -> bool:
        """True while some ids are not reflected in the emitted text yet."""
        return self.read_offset < len(self.ids)


class StreamDetokenizers:
    """`llm_postprocess`'s state: one detokenizer per stream, keyed by its stream key.

    An ensemble step after the decoupled engine sees each engine response as a separate
    request and (Triton 2.51) receives nothing but the engine's tensors. So `llm_preprocess`
    makes a `stream_key` per request, llm_engine echoes it on every response, and the state
    lives here, keyed by it (by the request id when a caller sends no key). It requires the
    model to run as a single instance (every response of a stream lands in the same process,
    in order). A response whose finish reason is set ends the stream; one that is final and
    unknown here is decoded on its own (not streamed). Entries of streams that never finish
    (the engine failed mid-stream) expire after `ttl_s`.
    """

    def __init__(self, tokenizer: Decoder, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.tokenizer = tokenizer
        self.ttl_s = ttl_s
        self.clock = clock
        self.streams: dict[str, tuple[IncrementalDetokenizer, float]] = {}
        self._next_sweep = clock() + ttl_s

    def step(self, key: str, ids: list[int], final: bool) -> str:
        """The text delta of one engine response of the stream `key`."""
        now = self.clock()
        entry = self.streams.pop(key, None)
        if entry is None:
            if final:
                return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
            detok = IncrementalDetokenizer(self.tokenizer)
        else:
            detok = entry[0]
        text = detok.add(ids)
        if final:
            text += detok.finish()
        else:
            self.streams[key] = (detok, now)
        if now >= self._next_sweep:
            self._next_sweep = now + self.ttl_s / 4
            for k in [k for k, (_, seen) in self.streams.items() if now - seen > self.ttl_s]:
                del self.streams[k]
        return text


def decode_stream(tokenizer: Decoder, chunks: list[list[int]], skip_special_tokens: bool = True
                  ) -> list[str]:
    """The deltas a stream of id chunks produces, the final flush last (for tests and tools)."""
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens)
    out = [detok.add(chunk) for chunk in chunks]
    out.append(detok.finish())
    return out
