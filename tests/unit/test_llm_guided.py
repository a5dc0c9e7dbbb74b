"""Guided decoding (uip.llm.guided): the input's shape, grammar compilation with xgrammar, and
the torch runtime's output under a grammar (tiny random model: valid even so); the
tensorrt_llm runtime's mapping to GuidedDecodingParams (against the stand-in module)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from support import fake_trtllm as F
from support.schemas import SCHEMAS

from uip.core.inputs import InvalidInput
from uip.llm import engine_tensors, guided
from uip.llm.engine import GenerationRequest
from uip.trtllm.runtime import (
    ExecutorSettings,
    executor_config,
    guided_decoding_params,
    to_executor_request,
)


@pytest.mark.parametrize("text, word", [
    ("nope", "not valid JSON"), ("[]", "JSON object"), ('{"type": "yaml"}', "'type'"),
    ('{"type": "json_schema"}', "'schema'"), ('{"type": "regex", "pattern": ""}', "'pattern'"),
    ('{"type": "json_schema", "schema": "{oops"}', "not valid JSON"),
])
def test_parse_refuses_bad_shapes_naming_the_field(text, word):
    with pytest.raises(InvalidInput, match=word):
        guided.parse(text)


def test_parse_round_trips_through_the_engine_tensors():
    g = guided.parse(json.dumps({"type": "json_schema", "schema": SCHEMAS[1]}))
    req = GenerationRequest([1, 2], 4, guide=g)
    call = engine_tensors.decode_request(engine_tensors.encode_request(req), 16)
    assert call.request.guide == g
    assert guided.read({guided.INPUT: np.array([[b""]], dtype=object)}) is None


@pytest.fixture(scope="module")
def guides(llm_tiny_dir):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(llm_tiny_dir).vocab_size
    return guided.Guides.from_folder(llm_tiny_dir, vocab)


@pytest.mark.parametrize("guide, word", [
    ({"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}},
     "json schema cannot be compiled"),
    ({"type": "regex", "pattern": "(unclosed"}, "regex cannot be compiled"),
    ({"type": "grammar", "grammar": "root ::= undefined_rule"}, "grammar cannot be compiled"),
])
def test_uncompilable_guides_are_invalid_input(guides, guide, word):
    with pytest.raises(InvalidInput, match=word):
        guides.compile(guided.parse(json.dumps(guide)))


def test_compiled_grammars_are_cached(guides):
    g = guided.parse('{"type": "json_object"}')
    assert guides.compile(g) is guides.compile(g)


@pytest.fixture(scope="module")
def engine(llm_tiny_dir):
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    eng = PagedEngine(llm_tiny_dir, PagedEngineConfig(num_blocks=64, page_size=16,
                                                      max_batch_tokens=256))
    yield eng
    eng.shutdown()


def _generate(engine, guide: dict, max_tokens: int, end_id: int | None = None):
    rid = engine.enqueue(GenerationRequest([1, 5, 9, 42], max_tokens, end_id=end_id,
                                           streaming=False,
                                           guide=guided.parse(json.dumps(guide))))
    results = []
    while not (results and results[-1].is_final):
        results += engine.await_responses(rid, timeout=60)
    return results[-1]


def _text(llm_tiny_dir, tokens: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_tiny_dir).decode(tokens, skip_special_tokens=True)


def test_torch_runtime_output_matches_schemas_and_ends_at_eos(engine, llm_tiny_dir):
    """A few of the 20 schemas in-process (all 20 run through Triton and the gateway)."""
    for schema in (SCHEMAS[6], SCHEMAS[7], SCHEMAS[14]):
        res = _generate(engine, {"type": "json_schema", "schema": schema}, 200)
        assert res.finish_reason == "stop" and res.tokens[-1] in engine.default_eos
        jsonschema.validate(json.loads(_text(llm_tiny_dir, res.tokens)), schema)


def test_regex_and_grammar_guides(engine, llm_tiny_dir):
    res = _generate(engine, {"type": "regex", "pattern": "[a-c]{3}[0-9]"}, 20)
    text = _text(llm_tiny_dir, res.tokens)
    assert res.finish_reason == "stop" and len(text) == 4 and text[3].isdigit()
    res = _generate(engine, {"type": "grammar", "grammar": 'root ::= "yes" | "no"'}, 20)
    assert _text(llm_tiny_dir, res.tokens) in ("yes", "no")


def test_a_grammar_that_cannot_finish_in_max_tokens_ends_with_length(engine, llm_tiny_dir):
    res = _generate(engine, {"type": "json_schema", "schema": SCHEMAS[11]}, 3)
    assert res.finish_reason == "length" and len(res.tokens) == 3
    text = _text(llm_tiny_dir, res.tokens)
    assert text.startswith("{")  # the start of the JSON, cut where it stood


def test_the_requests_own_end_id_ends_a_completed_grammar(engine):
    res = _generate(engine, {"type": "grammar", "grammar": 'root ::= "ok"'}, 20, end_id=7)
    assert res.finish_reason == "stop" and res.tokens[-1] == 7


# ------------------------------------------------------------------- tensorrt_llm runtime


@pytest.mark.parametrize("guide, kind, text", [
    ({"type": "json_object"}, "JSON", None),
    ({"type": "json_schema", "schema": {"type": "integer"}}, "JSON_SCHEMA", '{"type": "integer"}'),
    ({"type": "regex", "pattern": "a+"}, "REGEX", "a+"),
    ({"type": "grammar", "grammar": 'root ::= "x"'}, "EBNF_GRAMMAR", 'root ::= "x"'),
])
def test_trtllm_maps_guides_to_guided_decoding_params(guide, kind, text):
    p = guided_decoding_params(guided.parse(json.dumps(guide)), F)
    assert p.guide_type is getattr(F.GuidedDecodingParams.GuideType, kind) and p.guide == text


def test_trtllm_structural_tag_becomes_the_legacy_format():
    tag = {"type": "triggered_tags", "triggers": ["<f>"], "tags": [
        {"type": "tag", "begin": "<f>", "content": {"type": "json_schema",
                                                    "json_schema": {"type": "object"}},
         "end": "</f>"}]}
    p = guided_decoding_params(guided.parse(json.dumps({"type": "structural_tag",
                                                        "format": tag})), F)
    assert p.guide_type is F.GuidedDecodingParams.GuideType.STRUCTURAL_TAG
    assert json.loads(p.guide) == {"structures": [{"begin": "<f>", "schema": {"type": "object"},
                                                   "end": "</f>"}], "triggers": ["<f>"]}
    with pytest.raises(InvalidInput, match="triggered_tags"):
        guided_decoding_params(guided.parse(json.dumps({"type": "structural_tag", "format": {
            "type": "or", "elements": []}})), F)


def test_trtllm_request_and_executor_config(llm_tiny_dir):
    g = guided.parse('{"type": "json_object"}')
    req = to_executor_request(GenerationRequest([1, 2], 4, guide=g), F)
    assert req.guided_decoding_params.guide_type is F.GuidedDecodingParams.GuideType.JSON
    with pytest.raises(InvalidInput, match="guided_decoding_backend"):
        to_executor_request(GenerationRequest([1, 2], 4, guide=g), F, guided=False)
    s = ExecutorSettings.from_parameters({"guided_decoding_backend": "xgrammar",
                                          "tokenizer_dir": str(llm_tiny_dir)})
    cfg = executor_config(s, F, eos_token_ids=(2,)).guided_decoding_config
    assert cfg.backend is F.GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR
    assert cfg.stop_token_ids == [2] and json.loads(cfg.tokenizer_str)["model"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_tiny_dir)
    assert [tok.convert_tokens_to_ids(t) for t in cfg.encoded_vocab[:50]] == list(range(50))
    assert executor_config(ExecutorSettings(), F).guided_decoding_config is None
    with pytest.raises(ValueError, match="tokenizer_dir"):
        ExecutorSettings.from_parameters({"guided_decoding_backend": "xgrammar"})
