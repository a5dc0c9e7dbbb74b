"""The `llm` / `llm_bls` client contract: parse, validate, tokenize (pure).

Inputs (batch dimension 1): `text_input` BYTES [1] (required); optional `max_tokens` INT32,
`stream` BOOL, `temperature` FP32, `top_p` FP32, `top_k` INT32, `seed` UINT64, `stop_words`
BYTES [-1], `bad_words` BYTES [-1], `exclude_input_in_output` BOOL (default true),
`return_num_input_tokens`, `return_num_output_tokens` BOOL, `guided_decoding` BYTES
(structured output, `uip.llm.guided`; the ensemble maps it straight to llm_engine).

Rules (one validator for the ensemble's `llm_preprocess` and for `llm_bls`):
- the prompt becomes ids exactly as `tokenizer(text_input)["input_ids"]`. An empty prompt is
  allowed when the tokenizer adds a BOS token (the model then generates from BOS alone, as
  `generate` does for an empty string); it is refused when the ids would be empty.
- `max_tokens` defaults to `limits.default_max_tokens`; it must be >= 1, <= `limits.max_tokens`,
  and prompt + max_tokens must fit `limits.max_context` (default: the model's
  max_position_embeddings).
- sampling: absent means greedy (TensorRT-LLM's convention); temperature >= 0 (0 = greedy),
  top_p in (0, 1], top_k >= 0 (0 = not set, 1 = greedy), seed any UINT64.
- stop/bad words: empty strings are ignored (TensorRT-LLM clients send [""] for "none");
  at most `limits.max_words` words of at most `limits.max_word_bytes` bytes each.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uip.core.inputs import InvalidInput, Scalar, one_text, texts
from uip.llm import engine_tensors, guided, sampling, validation
from uip.llm.engine import GenerationRequest
from uip.llm.guided import Guide

FLAGS = (
    Scalar("stream", bool, default=False),
    Scalar("exclude_input_in_output", bool, default=True),
    Scalar("return_num_input_tokens", bool, default=False),
    Scalar("return_num_output_tokens", bool, default=False),
)
@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024  # cap on max_tokens
    default_max_tokens: int = 64
    max_context: int = 2048  # prompt + max_tokens
    max_prompt_bytes: int = 1 << 20
    max_words: int = 64  # stop words, bad words (each list)
    max_word_bytes: int = 256

    @classmethod
    def from_settings(cls, settings, model_max_positions: int | None = None) -> Limits:
        """From a model's `limits.*` (ModelSettings); max_context defaults to the model's."""
        d = cls()
        ctx = settings.limit("max_context", model_max_positions or d.max_context)
        out = cls(
            max_tokens=settings.limit("max_tokens", d.max_tokens),
            default_max_tokens=settings.limit("default_max_tokens", d.default_max_tokens),
            max_context=ctx,
            max_prompt_bytes=settings.limit("max_prompt_bytes", d.max_prompt_bytes),
            max_words=settings.limit("max_words", d.max_words),
            max_word_bytes=settings.limit("max_word_bytes", d.max_word_bytes),
        )
        if not 1 <= out.default_max_tokens <= out.max_tokens:
            raise ValueError(f"limits.default_max_tokens ({out.default_max_tokens}) must be in "
                             f"[1, limits.max_tokens={out.max_tokens}]")
        return out


@dataclass(frozen=True)
class LlmRequest:
    """One validated client request."""

    prompt: str
    input_ids: list[int]
    max_tokens: int
    stream: bool = False
    sampling: dict[str, float | int] = field(default_factory=dict)  # only the inputs given
    stop_words: list[str] = field(default_factory=list)
    bad_words: list[str] = field(default_factory=list)
    exclude_input_in_output: bool = True
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    lora_name: str | None = None  # a LoRA adapter (checked by the engine)
    guide: Guide | None = None


def _words(inputs: Mapping[str, np.ndarray], name: str, limits: Limits) -> list[str]:
    words = [w for w in texts(inputs, name, required=False) if w]
    if len(words) > limits.max_words:
        raise InvalidInput(f"'{name}' holds {len(words)} words; the limit is {limits.max_words} "
                           "(limits.max_words)")
    for w in words:
        if len(w.encode()) > limits.max_word_bytes:
            raise InvalidInput(f"a word of '{name}' is longer than {limits.max_word_bytes} bytes "
                               "(limits.max_word_bytes)")
    return words


class Preprocessor:
    """Client inputs -> `LlmRequest` -> llm_engine inputs. Holds only read-only state."""

    def __init__(self, tokenizer: Any, limits: Limits):
        self.tokenizer = tokenizer
        self.limits = limits
        self.end_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id

    # ------------------------------------------------------------------------------ parsing

    def tokenize(self, prompt: str) -> list[int]:
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word as token ids, without special tokens (TensorRT-LLM's preprocessing)."""
        ids = [[int(i) for i in self.tokenizer.encode(w, add_special_tokens=False)]
               for w in words]
        return [w for w in ids if w]

    def parse(self, inputs: Mapping[str, np.ndarray]) -> LlmRequest:
        lim = self.limits
        prompt = one_text(inputs, "text_input")
        if len(prompt.encode()) > lim.max_prompt_bytes:
            raise InvalidInput(f"'text_input' is longer than {lim.max_prompt_bytes} bytes "
                               "(limits.max_prompt_bytes)")
        max_tokens = Scalar("max_tokens", int, default=lim.default_max_tokens).read(inputs)
        validation.check_max_tokens(max_tokens, lim.max_tokens, "max_tokens")
        given = sampling.read_client(inputs)
        stream, exclude, ret_in, ret_out = (f.read(inputs) for f in FLAGS)
        stop_words = _words(inputs, "stop_words", lim)
        bad_words = _words(inputs, "bad_words", lim)
        guide = guided.read(inputs)
        ids = self.tokenize(prompt)
        if not ids:
            raise InvalidInput("'text_input' is empty and this tokenizer adds no BOS token, so "
                               "there is nothing to generate from; send some text")
        validation.check_context(len(ids), max_tokens, lim.max_context)
        lora_name = Scalar("lora_name", str).read(inputs) or None
        return LlmRequest(prompt=prompt, input_ids=ids, max_tokens=max_tokens, stream=stream,
                          sampling=given, stop_words=stop_words, bad_words=bad_words,
                          exclude_input_in_output=exclude, return_num_input_tokens=ret_in,
                          return_num_output_tokens=ret_out, lora_name=lora_name,
                          guide=guide)

    # ---------------------------------------------------------------------- engine inputs

    def engine_inputs(self, req: LlmRequest, streaming: bool, stop_words: bool = True,
                      sampling: bool = True) -> dict[str, np.ndarray]:
        """llm_engine's inputs for one request (batch 1). `stop_words`: pass the stop words
        as token sequences (the ensemble; llm_bls matches stop strings on the text itself).
        `sampling`: include the sampling inputs and `lora_name` that were given (the ensemble
        maps them straight from its own inputs instead)."""
        gen = GenerationRequest(
            input_ids=req.input_ids, max_new_tokens=req.max_tokens, end_id=self.end_id,
            pad_id=self.pad_id, streaming=streaming, bad_words=self.word_ids(req.bad_words),
            stop_words=self.word_ids(req.stop_words) if stop_words else [], guide=req.guide,
            lora_name=req.lora_name if sampling else None)
        return engine_tensors.encode_request(gen, req.sampling if sampling else {})


def check_ensemble_support(req: LlmRequest) -> None:
    """Refuse what the `llm` ensemble cannot do in Triton 2.51 (llm_bls can).

    Steps after the decoupled llm_engine receive only llm_engine's tensors, and llm_engine
    returns neither the prompt nor its length, so llm_postprocess can neither echo the prompt
    nor count it. Refused rather than ignored, so a client never gets a silently different
    answer.
    """
    if not req.exclude_input_in_output:
        raise InvalidInput(
            "'exclude_input_in_output' false is not available through the `llm` ensemble (its "
            "post-processing step cannot see the prompt in Triton 2.51); use `llm_bls`, or "
            "prepend the prompt on the client")
    if req.return_num_input_tokens:
        raise InvalidInput(
            "'return_num_input_tokens' is not available through the `llm` ensemble (its "
            "post-processing step cannot see the prompt in Triton 2.51); use `llm_bls`")


def new_stream_key() -> np.ndarray:
    """A fresh id for one `llm` ensemble request, as its `stream_key` tensor.

    In Triton 2.51 an ensemble step after a decoupled step receives only that step's tensors
    (it refuses to mix them with ensemble inputs or earlier steps' outputs), and the client's
    request id may be empty or reused. So llm_preprocess makes a key, llm_engine echoes it on
    every response, and llm_postprocess keys each stream's detokenizer by it.
    """
    return np.array([[uuid.uuid4().hex.encode()]], dtype=object)


def model_max_positions(folder) -> int | None:
    """max_position_embeddings from the artifact's config.json, if it has one."""
    import json
    from pathlib import Path

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("max_position_embeddings")
    return int(value) if value else None
