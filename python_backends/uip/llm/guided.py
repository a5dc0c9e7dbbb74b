"""Guided decoding (structured output): the `guided_decoding` input and its grammars (pure).

The input is `guided_decoding` BYTES [1] on `llm`, `llm_bls` and `llm_engine`: a JSON object
naming what the output must match, one of
- `{"type": "json_schema", "schema": {...}}` (a JSON Schema, as an object or a JSON string),
- `{"type": "json_object"}` (any JSON object),
- `{"type": "regex", "pattern": "..."}`,
- `{"type": "grammar", "grammar": "root ::= ..."}` (EBNF, xgrammar's / GBNF dialect),
- `{"type": "structural_tag", "format": {...}}` (xgrammar's structural tag: free text with
  tagged JSON sections, e.g. tool calls after a trigger string).

`parse` checks the shape (client, preprocess, engine tensors: the same rule everywhere);
`Guides` compiles one for a tokenizer with xgrammar (cached per grammar; an invalid schema,
regex or grammar is `InvalidInput` naming the problem) and makes the per-request
`GuidedMask`, the torch runtime's logits mask (`PagedEngine.enqueue(..., logits_mask=)`):
before each token it advances an xgrammar `GrammarMatcher` over the tokens generated since the
last call and returns the allowed tokens. When the grammar is complete only the request's end
tokens are allowed, so the engine finishes with `stop`. A grammar that cannot complete within
`max_tokens` ends with finish reason `length` and its output cut where it stood (as OpenAI's
API does): callers check the finish reason before parsing.

JSON is generated compactly (no free whitespace between elements), so a model cannot spend its
tokens on spaces and newlines.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from uip.core.inputs import InvalidInput, one_text

INPUT = "guided_decoding"  # the tensor's name on llm, llm_bls and llm_engine
KINDS = ("json_schema", "json_object", "regex", "grammar", "structural_tag")
_FIELD = {"json_schema": "schema", "regex": "pattern", "grammar": "grammar",
          "structural_tag": "format"}
MAX_BYTES = 1 << 20  # a guide larger than this is refused
CACHE_SIZE = 256  # compiled grammars kept per tokenizer


@dataclass(frozen=True)
class Guide:
    """What a request's output must match; `value` is the canonical text of the schema,
    pattern, grammar or structural tag ('' for json_object)."""

    kind: str
    value: str = ""

    def to_json(self) -> str:
        if self.kind == "json_object":
            return json.dumps({"type": "json_object"})
        field = _FIELD[self.kind]
        value: Any = self.value
        if self.kind in ("json_schema", "structural_tag"):
            value = json.loads(self.value)
        return json.dumps({"type": self.kind, field: value})

    def tensor(self) -> np.ndarray:
        return np.array([[self.to_json().encode()]], dtype=object)


def _fail(message: str) -> InvalidInput:
    return InvalidInput(f"'{INPUT}': {message}")


def parse(text: str) -> Guide:
    """The input's JSON text -> a `Guide`; its shape is checked, not its grammar."""
    if len(text.encode()) > MAX_BYTES:
        raise _fail(f"longer than {MAX_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise _fail(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _fail('must be a JSON object such as {"type": "json_object"}')
    kind = data.get("type")
    if kind not in KINDS:
        raise _fail(f"'type' must be one of {list(KINDS)}, got {kind!r}")
    if kind == "json_object":
        return Guide(kind)
    field = _FIELD[kind]
    value = data.get(field)
    if kind in ("json_schema", "structural_tag"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise _fail(f"'{field}' is not valid JSON ({e})") from None
        if not isinstance(value, dict | bool) or (kind == "structural_tag"
                                                  and not isinstance(value, dict)):
            raise _fail(f"type {kind} needs '{field}': a JSON object")
        return Guide(kind, json.dumps(value, sort_keys=True))
    if not isinstance(value, str) or not value:
        raise _fail(f"type {kind} needs '{field}': a non-empty string")
    return Guide(kind, value)


def read(inputs: Mapping[str, np.ndarray]) -> Guide | None:
    """The optional `guided_decoding` tensor of a request; an empty string means none."""
    if inputs.get(INPUT) is None:
        return None
    text = one_text(inputs, INPUT)
    return parse(text) if text.strip() else None


# ------------------------------------------------------------------------------ grammars


class Guides:
    """Grammar compilation for one tokenizer (xgrammar), cached per guide; thread-safe."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int] = ()):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._lock = threading.Lock()
        self.compile = lru_cache(maxsize=CACHE_SIZE)(self._compile)

    @classmethod
    def from_folder(cls, folder: Path | str, vocab_size: int,
                    stop_token_ids: Sequence[int] = ()) -> Guides:
        """For a checkpoint folder with a transformers tokenizer (tokenizer.json)."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(folder)), vocab_size, stop_token_ids)

    def _compile(self, guide: Guide):
        c = self._compiler
        try:
            with self._lock:
                if guide.kind == "json_object":
                    return c.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                 strict_mode=False)
                if guide.kind == "json_schema":
                    return c.compile_json_schema(guide.value, any_whitespace=False)
                if guide.kind == "regex":
                    return c.compile_regex(guide.value)
                if guide.kind == "grammar":
                    return c.compile_grammar(guide.value)
                return c.compile_structural_tag(
                    json.dumps({"type": "structural_tag", "format": json.loads(guide.value)}))
        except Exception as e:  # noqa: BLE001 - xgrammar's errors: the guide is at fault
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _fail(f"the {guide.kind.replace('_', ' ')} cannot be compiled: "
                        f"{message}") from None

    def mask(self, guide: Guide, end_ids: Sequence[int]) -> GuidedMask:
        """A fresh per-request mask (compiles the guide, or takes it from the cache)."""
        return GuidedMask(self._xgr, self.compile(guide), self.vocab_size, end_ids)


class GuidedMask:
    """One request's grammar state: called before each token with the tokens generated so far
    (the engine's logits-mask hook); returns a bool tensor [vocab] of the allowed tokens."""

    def __init__(self, xgr, compiled, vocab_size: int, end_ids: Sequence[int]):
        import torch

        self._torch = torch
        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=list(end_ids))
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)
        self.accepted = 0

    def __call__(self, generated: Sequence[int]):
        torch = self._torch
        for token in generated[self.accepted:]:
            if not self.matcher.accept_token(int(token)):
                raise RuntimeError(f"token {token} does not match the grammar")
            self.accepted += 1
        self.matcher.fill_next_token_bitmask(self._bitmask)
        bits = (self._bitmask[0, :, None] >> self._shifts) & 1
        return bits.reshape(-1)[:self.vocab_size].to(torch.bool)
