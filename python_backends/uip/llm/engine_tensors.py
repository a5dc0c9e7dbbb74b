"""`llm_engine`'s tensor contract (TensorRT-LLM's `tensorrt_llm` model), both directions (pure).

The only place that knows the tensors: `encode_request` (pre-processor, llm_bls) and
`decode_request` (the llm_engine adapter); `encode_response` (llm_engine) and
`decode_response` (llm_postprocess, both engine streams of llm_bls).

Inputs (each with the batch dimension, batch size 1): `input_ids` INT32 [-1], `input_lengths`
INT32 [1] (optional; default: all of input_ids), `request_output_len` INT32 [1], and optional
`end_id`, `pad_id` INT32 [1], `streaming` BOOL [1], `temperature` FP32 [1], `runtime_top_k`
INT32 [1], `runtime_top_p` FP32 [1], `random_seed` UINT64 [1], `stop_words_list` and
`bad_words_list` INT32 [2, -1] (TensorRT-LLM's format: row 0 the words' ids concatenated,
row 1 each word's end offset, -1 padded), `stop` BOOL [1], `stream_key` BYTES [1] (ours: an
opaque id echoed as `stream_key_out` on every response, for the `llm` ensemble's postprocess),
`guided_decoding` BYTES [1] (ours: structured output, a JSON object; see `uip.llm.guided`).
`lora_name` BYTES [1] (optional: a LoRA adapter of the deployment; empty or absent: the base
model). A control request carries `lora_control` BYTES [1] instead (JSON `{"op": "list" |
"load" | "unload", "name": ..., "key": <the admin key>}`, `uip lora`) and gets one final
response whose `lora_status` BYTES [1] is the JSON answer. llm_bls holding the engine
(`engine_transport: local`) takes the same request beside an empty `text_input` (its one
required input) and answers `lora_status` alone.
Outputs: `output_ids` INT32 [1, n] (beam dimension 1; only generated tokens: the new ones
when streaming, one step's or, when the relay fell behind, several steps' at once; all of
them otherwise), `sequence_length` INT32 [1] (n) and `finish_reason`
BYTES [1] (`stop`, `length`, `cancelled`; empty in a streaming response that is not the last).

`pad_id` is accepted for compatibility and unused (outputs are never padded). Stop words and
the end token are part of the output, as with TensorRT-LLM; the postprocessor may drop them.
Sampling follows TensorRT-LLM's conventions: absent inputs, `runtime_top_k` 0 and
`runtime_top_p` 0 mean "not set"; nothing set (or temperature 0, or top_k 1) is greedy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from uip.core.inputs import InvalidInput, Scalar, as_text
from uip.llm import guided, sampling, validation
from uip.llm.engine import GenerationRequest

RESPONSE_OUTPUTS = ("output_ids", "finish_reason")  # what a caller asks llm_engine for


@dataclass(frozen=True)
class EngineCall:
    """A decoded request: a generation, or (stop=True) a request to stop another one."""

    request: GenerationRequest | None
    stop: bool = False
    stream_key: bytes | None = None  # echoed on every response (the `llm` ensemble's stream id)
    control: dict | None = None  # a LoRA control request (`lora_control`)


@dataclass(frozen=True)
class EngineChunk:
    """One decoded llm_engine response: new token ids; a finish reason on the last one."""

    tokens: list[int]
    finish_reason: str | None = None

    @property
    def final(self) -> bool:
        return bool(self.finish_reason)


# ------------------------------------------------------------------------------- requests


def _ids(inputs: Mapping[str, np.ndarray]) -> list[int]:
    arr = inputs.get("input_ids")
    if arr is None:
        raise InvalidInput("input 'input_ids' is required")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInput(f"'input_ids' must have shape [1, N], got {list(arr.shape)}")
    if arr.shape[0] != 1:
        raise InvalidInput(f"llm_engine takes one sequence per request (batch size 1), got "
                           f"batch size {arr.shape[0]}; send one request per prompt")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(f"'input_ids' must be INT32, got {arr.dtype}")
    ids = arr[0]
    length = Scalar("input_lengths", int, minimum=0).read(inputs)
    if length is not None:
        if length > ids.size:
            raise InvalidInput(f"'input_lengths' is {length} but input_ids holds only "
                               f"{ids.size} tokens")
        ids = ids[:length]
    if ids.size == 0:
        raise InvalidInput("'input_ids' is empty: a prompt needs at least one token")
    return [int(t) for t in ids]


def word_list(inputs: Mapping[str, np.ndarray], name: str) -> list[list[int]]:
    """TensorRT-LLM's flattened word list ([1, 2, L]: ids, end offsets padded with -1)."""
    arr = inputs.get(name)
    if arr is None:
        return []
    if arr.ndim == 2:
        arr = arr.reshape(1, *arr.shape)
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] != 2:
        raise InvalidInput(f"'{name}' must have shape [1, 2, L] (ids and end offsets), got "
                           f"{list(arr.shape)}")
    ids, offsets = arr[0, 0], arr[0, 1]
    words, start = [], 0
    for end in offsets:
        end = int(end)
        if end < 0:
            break
        if end <= start or end > ids.size:
            raise InvalidInput(f"'{name}' offsets must increase and stay within the ids, got "
                               f"{[int(o) for o in offsets]}")
        words.append([int(t) for t in ids[start:end]])
        start = end
    return words


def to_word_list(words: list[list[int]]) -> np.ndarray:
    """The inverse of `word_list` (for clients and tests): [1, 2, L] INT32."""
    flat = [t for w in words for t in w]
    offsets = np.cumsum([len(w) for w in words]).tolist()
    width = max(len(flat), len(offsets), 1)
    out = np.full((1, 2, width), -1, dtype=np.int32)
    out[0, 0, :] = 0
    out[0, 0, :len(flat)] = flat
    out[0, 1, :len(offsets)] = offsets
    return out


def decode_request(inputs: Mapping[str, np.ndarray], max_tokens: int,
                   max_context: int | None = None) -> EngineCall:
    """Validate one request's inputs against the contract and the spec's limits."""
    if Scalar("stop", bool, default=False).read(inputs):
        return EngineCall(None, stop=True)
    control = decode_control(inputs)
    if control is not None:
        return EngineCall(None, control=control)
    ids = _ids(inputs)
    out_len = Scalar("request_output_len", int).read(inputs)
    if out_len is None:
        raise InvalidInput("input 'request_output_len' is required")
    validation.check_max_tokens(out_len, max_tokens, "request_output_len")
    validation.check_context(len(ids), out_len, max_context, "request_output_len")
    key = inputs.get("stream_key")
    stream_key = key.reshape(-1)[0] if key is not None and key.size else None
    if isinstance(stream_key, str):
        stream_key = stream_key.encode()
    return EngineCall(GenerationRequest(
        input_ids=ids,
        max_new_tokens=out_len,
        sampling=sampling.read_engine(inputs),
        end_id=Scalar("end_id", int, minimum=0).read(inputs),
        pad_id=Scalar("pad_id", int, minimum=0).read(inputs),
        stop_words=word_list(inputs, "stop_words_list"),
        bad_words=word_list(inputs, "bad_words_list"),
        streaming=Scalar("streaming", bool, default=False).read(inputs),
        lora_name=Scalar("lora_name", str).read(inputs) or None,
        guide=guided.read(inputs),
    ), stream_key=stream_key)


CONTROL_OPS = ("list", "load", "unload")


def decode_control(inputs: Mapping[str, np.ndarray]) -> dict | None:
    """The LoRA control request in `lora_control` (`{"op", "name", "key"}`), None without one;
    InvalidInput when it is not a valid one."""
    text = Scalar("lora_control", str).read(inputs)
    if text is None:
        return None
    try:
        control = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"'lora_control' is not JSON: {e}") from None
    if not isinstance(control, dict) or control.get("op") not in CONTROL_OPS:
        raise InvalidInput(f"'lora_control' must be a JSON object with op one of {CONTROL_OPS}")
    if control["op"] != "list" and not isinstance(control.get("name"), str):
        raise InvalidInput(f"'lora_control' op {control['op']!r} needs a string 'name'")
    return control


def encode_control(op: str, name: str | None = None, key: str | None = None,
                   text: bool = False) -> dict[str, np.ndarray]:
    """A LoRA control request (`uip lora`): the JSON in `lora_control` beside placeholders for
    the model's required inputs: llm_engine's ids, or (`text`: llm_bls holding the engine) an
    empty `text_input`."""
    body = {"op": op, "name": name, "key": key}
    placeholders = ({"text_input": np.array([[b""]], dtype=object)} if text else {
        "input_ids": np.zeros((1, 1), dtype=np.int32),
        "request_output_len": np.array([[1]], dtype=np.int32),
    })
    return {**placeholders,
            "lora_control": np.array([[json.dumps(body).encode()]], dtype=object)}


def encode_request(req: GenerationRequest, given_sampling: Mapping[str, float | int] | None = None
                   ) -> dict[str, np.ndarray]:
    """llm_engine's inputs for one request (batch 1). `given_sampling` (field -> value, as a
    client sent them) is passed as is; None sends `req.sampling`'s set fields."""
    if given_sampling is None:
        sp = req.sampling
        given_sampling = {f: getattr(sp, f) for f in sampling.NAMES if getattr(sp, f) is not None}
    out = {
        "input_ids": np.asarray([req.input_ids], dtype=np.int32),
        "input_lengths": np.array([[len(req.input_ids)]], dtype=np.int32),
        "request_output_len": np.array([[req.max_new_tokens]], dtype=np.int32),
        "streaming": np.array([[req.streaming]], dtype=bool),
        "stop_words_list": to_word_list(req.stop_words),
        "bad_words_list": to_word_list(req.bad_words),
    }
    if req.guide is not None:
        out[guided.INPUT] = req.guide.tensor()
    for name, value in (("end_id", req.end_id), ("pad_id", req.pad_id)):
        if value is not None:
            out[name] = np.array([[value]], dtype=np.int32)
    if req.lora_name:
        out["lora_name"] = np.array([[req.lora_name.encode()]], dtype=object)
    out.update(sampling.engine_tensors(given_sampling))
    return out


def encode_stop(request_inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request that stops another one carrying the same Triton request id."""
    return {
        "input_ids": request_inputs["input_ids"][:, :1],
        "request_output_len": np.array([[1]], dtype=np.int32),
        "stop": np.array([[True]], dtype=bool),
    }


# ------------------------------------------------------------------------------ responses


def encode_response(tokens: list[int], finish_reason: str | None = None,
                    stream_key: bytes | None = None) -> dict[str, np.ndarray]:
    """One response's output tensors (batch 1, beam 1); `stream_key` echoes the request's."""
    out = {
        "output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1),
        "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
        "finish_reason": np.array([[(finish_reason or "").encode()]], dtype=object),
    }
    if stream_key is not None:
        out["stream_key_out"] = np.array([[stream_key]], dtype=object)
    return out


def encode_control_status(status: dict) -> dict[str, np.ndarray]:
    """The JSON answer of a LoRA control request, `lora_status` alone (llm_bls's response)."""
    return {"lora_status": np.array([[json.dumps(status).encode()]], dtype=object)}


def encode_control_response(status: dict) -> dict[str, np.ndarray]:
    """llm_engine's one final response to a LoRA control request."""
    return {**encode_response([], "control"), **encode_control_status(status)}


def decode_control_response(lora_status: np.ndarray) -> dict:
    return json.loads(as_text(lora_status.reshape(-1)[0], "lora_status"))


def decode_response(output_ids: np.ndarray | None, finish_reason: np.ndarray | None
                    ) -> EngineChunk:
    """From a response's `output_ids` and `finish_reason` (either may be absent)."""
    finish = ""
    if finish_reason is not None and finish_reason.size:
        finish = as_text(finish_reason.reshape(-1)[0], "finish_reason")
    tokens = [] if output_ids is None else [int(t) for t in output_ids.reshape(-1)]
    return EngineChunk(tokens, finish or None)
