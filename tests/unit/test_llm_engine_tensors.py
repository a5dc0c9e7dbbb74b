"""llm_engine's tensor contract (TensorRT-LLM's) parsed into engine requests, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from uip.core.inputs import InvalidInput
from uip.llm.engine_tensors import decode_request, encode_response, to_word_list, word_list


def base(**extra) -> dict[str, np.ndarray]:
    inputs = {
        "input_ids": np.array([[5, 6, 7, 0, 0]], dtype=np.int32),
        "input_lengths": np.array([[3]], dtype=np.int32),
        "request_output_len": np.array([[8]], dtype=np.int32),
    }
    inputs.update(extra)
    return inputs


def test_minimal_request_is_greedy_non_streaming():
    call = decode_request(base(), max_tokens=64, max_context=100)
    req = call.request
    assert not call.stop
    assert req.input_ids == [5, 6, 7]  # input_lengths cuts the padding
    assert req.max_new_tokens == 8 and req.streaming is False
    assert req.sampling.greedy and req.end_id is None
    assert req.stop_words == [] and req.bad_words == []


def test_all_optional_inputs():
    call = decode_request(base(
        end_id=np.array([[2]], np.int32), pad_id=np.array([[3]], np.int32),
        streaming=np.array([[True]]), temperature=np.array([[0.7]], np.float32),
        runtime_top_k=np.array([[40]], np.int32), runtime_top_p=np.array([[0.9]], np.float32),
        random_seed=np.array([[2**63 + 5]], np.uint64),
        stop_words_list=to_word_list([[1, 2], [3]]),
        bad_words_list=to_word_list([[9]]),
    ), max_tokens=64)
    req = call.request
    assert req.streaming and req.end_id == 2 and req.pad_id == 3
    assert req.sampling.temperature == pytest.approx(0.7) and req.sampling.top_k == 40
    assert req.sampling.top_p == pytest.approx(0.9) and req.sampling.seed == 2**63 + 5
    assert req.stop_words == [[1, 2], [3]] and req.bad_words == [[9]]


def test_zero_top_k_and_top_p_mean_unset():
    req = decode_request(base(runtime_top_k=np.array([[0]], np.int32),
                     runtime_top_p=np.array([[0.0]], np.float32)), max_tokens=64).request
    assert req.sampling.top_k is None and req.sampling.top_p is None and req.sampling.greedy


def test_input_lengths_is_optional():
    inputs = base()
    del inputs["input_lengths"]
    assert decode_request(inputs, max_tokens=64).request.input_ids == [5, 6, 7, 0, 0]


def test_stop_request():
    call = decode_request(base(stop=np.array([[True]])), max_tokens=64)
    assert call.stop and call.request is None


@pytest.mark.parametrize("extra, message", [
    ({"input_ids": np.zeros((1, 0), np.int32), "input_lengths": np.array([[0]], np.int32)},
     "empty"),
    ({"input_lengths": np.array([[0]], np.int32)}, "empty"),
    ({"input_lengths": np.array([[9]], np.int32)}, "input_lengths"),
    ({"input_ids": np.array([[1, 2], [3, 4]], np.int32)}, "batch size"),
    ({"request_output_len": np.array([[0]], np.int32)}, ">= 1"),
    ({"request_output_len": np.array([[65]], np.int32)}, "limits.max_tokens"),
    ({"request_output_len": np.array([[62]], np.int32)}, "limits.max_context"),
    ({"temperature": np.array([[-1.0]], np.float32)}, "temperature"),
    ({"temperature": np.array([[np.nan]], np.float32)}, "finite"),
    ({"runtime_top_p": np.array([[1.5]], np.float32)}, "runtime_top_p"),
    ({"runtime_top_k": np.array([[-1]], np.int32)}, "runtime_top_k"),
    ({"stop_words_list": np.array([[[1, 2], [3, -1]]], np.int32)}, "offsets"),
    ({"stop_words_list": np.array([[1, 2, 3]], np.int32)}, "shape"),
])
def test_bad_inputs_are_invalid(extra, message):
    with pytest.raises(InvalidInput, match=message):
        decode_request(base(**extra), max_tokens=64, max_context=64)


def test_missing_output_len_is_invalid():
    inputs = base()
    del inputs["request_output_len"]
    with pytest.raises(InvalidInput, match="request_output_len"):
        decode_request(inputs, max_tokens=64)


def test_word_list_round_trip():
    words = [[4, 5, 6], [7], [8, 9]]
    assert word_list({"w": to_word_list(words)}, "w") == words
    assert word_list({"w": to_word_list([])}, "w") == []
    assert word_list({}, "w") == []


def test_outputs_shapes():
    out = encode_response([1, 2, 3], "length")
    assert out["output_ids"].shape == (1, 1, 3) and out["output_ids"].dtype == np.int32
    assert out["sequence_length"].tolist() == [[3]]
    assert out["finish_reason"].tolist() == [[b"length"]]
    empty = encode_response([], None)
    assert empty["output_ids"].shape == (1, 1, 0) and empty["finish_reason"].tolist() == [[b""]]


def test_coalesce_merges_ready_results_until_final_or_error():
    from uip.llm.engine import GenerationResult as R
    from uip.llm.engine import coalesce

    assert coalesce([]) == []
    merged = coalesce([R(1, [1], False), R(1, [2, 3], False), R(1, [4], True, "length")])
    assert merged == [R(1, [1, 2, 3, 4], True, "length")]
    err = R(1, [], True, "error", "boom")
    assert coalesce([R(1, [1], False), err]) == [R(1, [1], False), err]


def test_coalesce_merges_per_request_and_puts_the_ending_requests_first():
    from uip.llm.engine import GenerationResult as R
    from uip.llm.engine import coalesce

    steps = [R(1, [10], False), R(2, [20], False), R(3, [30], False),  # one engine step
             R(1, [11], False), R(2, [21], True, "length"), R(3, [31], False)]  # the next
    assert coalesce(steps) == [R(2, [20, 21], True, "length"), R(1, [10, 11], False),
                               R(3, [30, 31], False)]
    err = R(3, [], True, "error", "boom")
    assert coalesce([R(1, [1], False), R(3, [2], False), err]) == [
        R(3, [2], False), err, R(1, [1], False)]  # its own order kept, before the others


def test_control_request_for_either_engine_model():
    """`uip lora`: llm_engine's placeholders are ids, llm_bls's (holding the engine) an empty
    text_input; both decode to the same control, which decode_request carries too."""
    from uip.llm.engine_tensors import (
        decode_control,
        decode_control_response,
        encode_control,
        encode_control_response,
        encode_control_status,
    )

    engine, text = encode_control("load", "a", "k"), encode_control("load", "a", "k", text=True)
    assert set(engine) == {"input_ids", "request_output_len", "lora_control"}
    assert set(text) == {"text_input", "lora_control"}
    want = {"op": "load", "name": "a", "key": "k"}
    assert decode_control(engine) == decode_control(text) == want
    assert decode_request(engine, max_tokens=8).control == want
    assert decode_control(base()) is None
    with pytest.raises(InvalidInput, match="needs a string 'name'"):
        decode_control(encode_control("unload"))
    status = {"enabled": True, "loaded": []}
    assert set(encode_control_status(status)) == {"lora_status"}
    assert decode_control_response(encode_control_response(status)["lora_status"]) == status
