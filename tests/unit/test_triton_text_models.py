"""The `llm` ensemble's text steps as Triton runs them: llm_preprocess (client request ->
llm_engine inputs + stream_key) and llm_postprocess (per-stream detokenizer state)."""

from __future__ import annotations

import numpy as np
import pytest
from llm_text_fixtures import MULTIBYTE
from support import fake_pb_utils as pbu

from uip.llm.engine_tensors import decode_request, encode_response
from uip.triton.models.llm_postprocess import LlmPostprocessModel
from uip.triton.models.llm_preprocess import LlmPreprocessModel

ENGINE_INPUTS = {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id",
                 "streaming", "stop_words_list", "bad_words_list", "stream_key"}


@pytest.fixture(scope="module")
def pre(llm_tiny_dir):
    m = LlmPreprocessModel()
    m.initialize(pbu.model_args(pbu.repository_config("llm_preprocess",
                                                      artifact=str(llm_tiny_dir))))
    yield m
    m.finalize()


@pytest.fixture
def post(llm_tiny_dir):
    m = LlmPostprocessModel()
    m.initialize(pbu.model_args(pbu.repository_config("llm_postprocess",
                                                      artifact=str(llm_tiny_dir))))
    yield m
    m.finalize()


def client_request(text: str | None = "hello world", **extra):
    inputs = {} if text is None else {"text_input": np.array([[text.encode()]], dtype=object)}
    for k, v in extra.items():
        inputs[k] = np.asarray([[v]]) if not isinstance(v, np.ndarray) else v
    return pbu.Request(inputs)


# --- llm_preprocess --------------------------------------------------------------------------


def test_preprocess_gives_the_engine_inputs_and_a_stream_key(pre):
    stop = np.array([[b"world", b""]], dtype=object)
    (a, b) = pre.execute([client_request("hello world", max_tokens=np.int32(7), stream=True,
                                         stop_words=stop),
                          client_request("hello world")])
    assert not a.has_error() and not b.has_error()
    out = a.outputs()
    assert set(out) == ENGINE_INPUTS
    tok = pre.pre.tokenizer
    assert out["input_ids"].tolist() == [tok("hello world")["input_ids"]]
    assert out["input_ids"].dtype == np.int32
    assert out["input_lengths"].tolist() == [[out["input_ids"].shape[1]]]
    assert out["request_output_len"].tolist() == [[7]]
    assert out["streaming"].tolist() == [[True]]
    assert out["end_id"].tolist() == [[tok.eos_token_id]]
    key_a, key_b = (r.outputs()["stream_key"] for r in (a, b))
    assert key_a.shape == (1, 1) and key_a[0, 0] != key_b[0, 0]  # one key per request
    # and llm_engine accepts them as they are
    call = decode_request(out, max_tokens=1024, max_context=2048)
    assert call.stream_key == key_a[0, 0]
    assert call.request.stop_words == [tok.encode("world", add_special_tokens=False)]
    assert call.request.max_new_tokens == 7 and call.request.streaming
    assert b.outputs()["request_output_len"].tolist() == [[64]]  # limits.default_max_tokens
    assert b.outputs()["streaming"].tolist() == [[False]]


@pytest.mark.parametrize("request_, message", [
    (client_request(None), "input 'text_input' is required"),
    (client_request(max_tokens=np.int32(0)), "max_tokens"),
    (client_request(exclude_input_in_output=False), "use `llm_bls`"),
    (client_request(return_num_input_tokens=True), "use `llm_bls`"),
])
def test_preprocess_bad_input_is_invalid_arg_for_that_request_only(pre, request_, message):
    bad, good = pre.execute([request_, client_request()])
    assert bad.has_error() and bad.error().code() == pbu.TritonError.INVALID_ARG
    assert message in bad.error().message()
    assert not good.has_error() and "input_ids" in good.outputs()


# --- llm_postprocess -------------------------------------------------------------------------


def engine_step(ids, reason=None, key: bytes | None = None, request_id=""):
    out = encode_response(ids, reason)
    inputs = {"output_ids": out["output_ids"], "engine_finish_reason": out["finish_reason"]}
    if key is not None:
        inputs["stream_key"] = np.array([[key]], dtype=object)
    return pbu.Request(inputs, request_id=request_id)


def delta(resp):
    assert not resp.has_error()
    o = resp.outputs()
    return (o["text_output"][0, 0].decode(), o["finish_reason"][0, 0].decode(),
            int(o["num_output_tokens"][0, 0]))


def test_postprocess_keys_state_by_stream_key_and_deltas_add_up(post):
    tok = post.streams.tokenizer
    ids_a = tok.encode(MULTIBYTE[0], add_special_tokens=False)
    ids_b = tok.encode(" and " + MULTIBYTE[3], add_special_tokens=False)
    n = max(len(ids_a), len(ids_b))
    texts = {b"a": [], b"b": []}
    for i in range(n):  # the two streams interleaved, one token per engine response
        batch, keys = [], []
        for key, ids in ((b"a", ids_a), (b"b", ids_b)):
            if i < len(ids):
                batch.append(engine_step([ids[i]], "length" if i == len(ids) - 1 else None,
                                         key, request_id="same-id"))
                keys.append(key)
        for key, resp in zip(keys, post.execute(batch), strict=True):
            text, reason, count = delta(resp)
            assert count == 1
            texts[key].append((text, reason))
    for key, ids in ((b"a", ids_a), (b"b", ids_b)):
        assert "".join(t for t, _ in texts[key]) == tok.decode(ids, skip_special_tokens=True)
        assert [r for _, r in texts[key]] == [""] * (len(ids) - 1) + ["length"]
    assert post.streams.streams == {}  # finished streams leave no state


def test_postprocess_without_stream_key_keys_by_request_id(post):
    tok = post.streams.tokenizer
    ids = tok.encode(MULTIBYTE[1], add_special_tokens=False)
    half = len(ids) // 2
    (r1,) = post.execute([engine_step(ids[:half], request_id="r1")])
    (other,) = post.execute([engine_step(ids[half:], "length", request_id="r2")])
    (r2,) = post.execute([engine_step(ids[half:], "stop", request_id="r1")])
    assert delta(r1)[0] + delta(r2)[0] == tok.decode(ids, skip_special_tokens=True)
    assert delta(r2)[1:] == ("stop", len(ids) - half)
    assert delta(other)[0] == tok.decode(ids[half:], skip_special_tokens=True)  # decoded alone


def test_postprocess_missing_output_ids_fails_only_that_request(post):
    bad = pbu.Request({"engine_finish_reason": np.array([[b"length"]], dtype=object)})
    ids = post.streams.tokenizer.encode(" x y", add_special_tokens=False)
    out = post.execute([bad, engine_step(ids, "length")])
    assert out[0].error().code() == pbu.TritonError.INVALID_ARG
    assert out[0].error().message() == "input 'output_ids' is required"
    assert delta(out[1]) == (" x y", "length", len(ids))


def test_postprocess_refuses_more_than_one_instance(llm_tiny_dir):
    config = pbu.repository_config("llm_postprocess", artifact=str(llm_tiny_dir))
    config["instance_group"] = [{"count": 2, "kind": "KIND_CPU"}]
    with pytest.raises(ValueError, match="exactly one instance"):
        LlmPostprocessModel().initialize(pbu.model_args(config))
