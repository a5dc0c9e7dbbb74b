"""The `llm` contract's validator and tokenization (llm_preprocess and llm_bls share it)."""

from __future__ import annotations

import numpy as np
import pytest
from llm_text_fixtures import MULTIBYTE, tiny_tokenizer

from uip.core.inputs import InvalidInput
from uip.core.paths import DEFAULT_SPECS
from uip.core.settings import ModelSettings, sha256_file
from uip.llm.engine_tensors import decode_request as engine_parse
from uip.llm.engine_tensors import encode_response as engine_outputs
from uip.llm.engine_tensors import word_list
from uip.llm.preprocess import Limits, Preprocessor, new_stream_key
from uip.spec import load_spec


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pre(tok):
    return Preprocessor(tok, Limits(max_tokens=100, default_max_tokens=16, max_context=64,
                                    max_words=3, max_word_bytes=20))


def inputs(text="Hello", **kw):
    out = {"text_input": np.array([[text.encode()]], dtype=object)}
    types = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32,
             "top_k": np.int32, "seed": np.uint64}
    for k, v in kw.items():
        if k in ("stop_words", "bad_words"):
            out[k] = np.array([[w.encode() for w in v]], dtype=object)
        else:
            out[k] = np.array([[v]], dtype=types.get(k, bool))
    return out


@pytest.mark.parametrize("text", ["Hello world", "", *MULTIBYTE])
def test_ids_exactly_as_the_tokenizer(pre, tok, text):
    req = pre.parse(inputs(text))
    assert req.input_ids == list(tok(text)["input_ids"])
    assert req.prompt == text


def test_empty_prompt_is_bos_only(pre, tok):
    assert pre.parse(inputs("")).input_ids == [tok.bos_token_id]


def test_empty_prompt_refused_without_bos():
    class NoBos:
        eos_token_id, pad_token_id = 1, 2

        def __call__(self, text):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(InvalidInput, match="empty"):
        Preprocessor(NoBos(), Limits()).parse(inputs(""))


def test_defaults(pre):
    req = pre.parse(inputs())
    assert req.max_tokens == 16 and req.stream is False and req.sampling == {}
    assert req.exclude_input_in_output is True
    assert not req.return_num_input_tokens and not req.return_num_output_tokens
    assert req.stop_words == [] and req.bad_words == []


@pytest.mark.parametrize("kw, match", [
    ({"max_tokens": 0}, ">= 1"),
    ({"max_tokens": -5}, ">= 1"),
    ({"max_tokens": 101}, "limits.max_tokens"),
    ({"max_tokens": 62}, "context"),  # Hello = 2 tokens + 62 = 64 ok; see below
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "finite"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop_words": ["a", "b", "c", "d"]}, "max_words"),
    ({"bad_words": ["x" * 21]}, "max_word_bytes"),
])
def test_refused(pre, kw, match):
    text = "Hello world" if kw.get("max_tokens") == 62 else "Hello"
    with pytest.raises(InvalidInput, match=match):
        pre.parse(inputs(text, **kw))


def test_context_boundary(pre, tok):
    n = len(tok("Hello")["input_ids"])
    assert pre.parse(inputs("Hello", max_tokens=64 - n)).max_tokens == 64 - n
    with pytest.raises(InvalidInput, match="limits.max_context"):
        pre.parse(inputs("Hello", max_tokens=64 - n + 1))


def test_bad_text_input(pre):
    with pytest.raises(InvalidInput, match="required"):
        pre.parse({})
    with pytest.raises(InvalidInput, match="exactly one"):
        pre.parse({"text_input": np.array([[b"a", b"b"]], dtype=object)})
    with pytest.raises(InvalidInput, match="UTF-8"):
        pre.parse({"text_input": np.array([[b"\xff\xfe"]], dtype=object)})
    with pytest.raises(InvalidInput, match="one value"):
        pre.parse(inputs(max_tokens=1) | {"max_tokens": np.array([[1, 2]], dtype=np.int32)})


def test_sampling_values_kept_as_given(pre):
    req = pre.parse(inputs(temperature=0.7, top_p=1.0, top_k=0, seed=2**64 - 1))
    assert req.sampling == pytest.approx({"temperature": 0.7, "top_p": 1.0, "top_k": 0,
                                          "seed": 2**64 - 1})


def test_words_to_trtllm_lists(pre, tok):
    req = pre.parse(inputs(stop_words=["world", "", " 東京"], bad_words=["café"]))
    assert req.stop_words == ["world", " 東京"]  # empty strings are "no word"
    eng = pre.engine_inputs(req, streaming=False)
    want = [tok.encode(w, add_special_tokens=False) for w in req.stop_words]
    assert eng["stop_words_list"].shape[:2] == (1, 2)
    assert word_list(eng, "stop_words_list") == want
    assert word_list(eng, "bad_words_list") == [tok.encode("café", add_special_tokens=False)]


def test_engine_inputs_match_llm_engine_contract(pre, tok):
    req = pre.parse(inputs("naïve café", max_tokens=8, temperature=0.5, top_k=3, seed=11,
                           stop_words=["x"], stream=True))
    eng = pre.engine_inputs(req, streaming=True)
    assert eng["input_ids"].dtype == np.int32 and eng["input_ids"].shape == (1, len(req.input_ids))
    call = engine_parse(eng, max_tokens=100, max_context=64)  # llm_engine accepts them as is
    g = call.request
    assert g.input_ids == req.input_ids and g.max_new_tokens == 8 and g.streaming
    assert g.end_id == tok.eos_token_id and g.pad_id == tok.pad_token_id
    assert g.sampling.temperature == pytest.approx(0.5) and g.sampling.top_k == 3
    assert g.sampling.seed == 11 and g.stop_words == [tok.encode("x", add_special_tokens=False)]
    # the ensemble maps sampling straight from its inputs; llm_bls matches stop strings itself
    eng2 = pre.engine_inputs(req, streaming=False, stop_words=False, sampling=False)
    assert "temperature" not in eng2 and "random_seed" not in eng2
    assert engine_parse(eng2, 100).request.stop_words == []
    assert engine_parse(eng2, 100).request.sampling.greedy


def test_stream_keys_are_unique_and_echoed_by_the_engine():
    a, b = new_stream_key(), new_stream_key()
    assert a.shape == (1, 1) and a[0, 0] != b[0, 0]
    eng = {"input_ids": np.array([[1, 2]], dtype=np.int32),
           "request_output_len": np.array([[3]], dtype=np.int32), "stream_key": a}
    call = engine_parse(eng, 100)
    assert call.stream_key == a[0, 0]
    out = engine_outputs([5], "length", call.stream_key)
    assert out["stream_key_out"][0, 0] == a[0, 0]
    assert "stream_key_out" not in engine_outputs([5], "length")


def test_limits_from_settings():
    s = ModelSettings(name="m", limits={"max_tokens": "50", "default_max_tokens": "10"})
    lim = Limits.from_settings(s, model_max_positions=512)
    assert (lim.max_tokens, lim.default_max_tokens, lim.max_context) == (50, 10, 512)
    s.limits["max_context"] = "256"
    assert Limits.from_settings(s, 512).max_context == 256
    s.limits["default_max_tokens"] = "60"
    with pytest.raises(ValueError, match="default_max_tokens"):
        Limits.from_settings(s, 512)


def test_specs_pin_the_tokenizer_the_builder_makes(tmp_path):
    """The text models pin tokenizer.json; built afresh it hashes the same."""
    from uip.artifacts.llm_tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    got = sha256_file(tmp_path / "tokenizer.json")
    pins = [m.artifact.sha256["tokenizer.json"]
            for f in ("llm.yaml", "llm_bls.yaml") for m in load_spec(DEFAULT_SPECS / f).models
            if m.name in ("llm_preprocess", "llm_postprocess", "llm_bls")]
    assert len(pins) == 3 and set(pins) == {got}


def test_ensemble_refuses_what_it_cannot_do(pre):
    from uip.llm.preprocess import check_ensemble_support

    check_ensemble_support(pre.parse(inputs(return_num_output_tokens=True)))
    with pytest.raises(InvalidInput, match="llm_bls"):
        check_ensemble_support(pre.parse(inputs(exclude_input_in_output=False)))
    with pytest.raises(InvalidInput, match="llm_bls"):
        check_ensemble_support(pre.parse(inputs(return_num_input_tokens=True)))
