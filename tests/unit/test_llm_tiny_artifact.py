"""The tiny offline LLM artifact: deterministic bytes, a usable byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from uip.artifacts import BUILDERS, builder
from uip.core.paths import DEFAULT_SPECS
from uip.core.settings import sha256_file
from uip.spec import load_spec


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dest = tmp_path_factory.mktemp("llm-tiny")
    builder("llm-tiny")(dest)
    return dest


def pinned_sha256() -> dict[str, str]:
    spec = load_spec(DEFAULT_SPECS / "llm.yaml")
    engine = next(m for m in spec.models if m.name == "llm_engine")
    assert engine.artifact is not None and engine.artifact.path == "llm-tiny"
    return engine.artifact.sha256


def test_registered():
    assert BUILDERS["llm-tiny"] == "uip.artifacts.llm_tiny:build"


def test_weights_are_byte_identical_to_the_spec(built):
    """Built afresh here, the weights hash to what specs/llm.yaml pins (and the server checks)."""
    pins = pinned_sha256()
    assert pins, "specs/llm.yaml pins no sha256 for llm-tiny"
    for name, want in pins.items():
        assert sha256_file(built / name) == want, name


def test_layout_loads_with_from_pretrained(built):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    cfg = AutoConfig.from_pretrained(built)
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads) == (128, 2, 4, 2)
    tok = AutoTokenizer.from_pretrained(built)
    assert cfg.vocab_size == len(tok) == 4096
    gen = GenerationConfig.from_pretrained(built)
    assert gen.eos_token_id == tok.eos_token_id is not None
    assert tok.bos_token and tok.pad_token and tok.chat_template


def test_tokenizer_is_byte_level_and_round_trips(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    text = "Hello world, naïve café 東京 😀 👋🏽 鑫 齉 — done."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = [tok.decode([i]) for i in ids[1:]]
    assert any("\ufffd" in p for p in pieces), "no character spans several tokens"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True,
                                   add_generation_prompt=True)
    chat_ids = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
    assert chat_ids.count(tok.bos_token_id) == 1
    assert tok.decode(chat_ids).endswith("<|assistant|>\n")
