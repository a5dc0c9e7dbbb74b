"""The torch-free tokenizer of the text models equals transformers' AutoTokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uip.core.paths import artifacts_root
from uip.llm.tokenizer import TextTokenizer, load_tokenizer

TEXTS = ["Hello world", "café 東京 😀 naïve", "def main():\n    return", "Привет мир, 你好", "",
         "  leading and trailing  ", "<s> literal specials </s><pad>", "a" * 300, "👋🏽 ∑ ∞ →"]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer

    folder = artifacts_root() / "llm-tiny"
    return load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_autotokenizer(pair, text):
    ours, ref = pair
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == ref.encode(text,
                                                                     add_special_tokens=False)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_equals_autotokenizer(pair, skip):
    ours, ref = pair
    for text in TEXTS:
        ids = ref(text)["input_ids"] + [ref.eos_token_id]
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
            ids, skip_special_tokens=skip)
    ids = list(range(0, 4096, 7))  # arbitrary ids, broken UTF-8 included
    assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids,
                                                                    skip_special_tokens=skip)


def test_special_token_ids(pair):
    ours, ref = pair
    assert (ours.eos_token_id, ours.pad_token_id, ours.bos_token_id) == (
        ref.eos_token_id, ref.pad_token_id, ref.bos_token_id)


def test_no_torch_import():
    # the stand-in for triton_python_backend_utils (only inside a stub) lets engine_streams import
    code = ("import sys; import support.fake_pb_utils; "
            "from uip.llm.tokenizer import load_tokenizer; "
            f"load_tokenizer({str(artifacts_root() / 'llm-tiny')!r}); "
            "import uip.llm.orchestrate, uip.llm.detokenize, uip.triton.engine_streams; "
            "print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "False"


def test_missing_tokenizer_json_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="tokenizers"):
        load_tokenizer(tmp_path, "sentencepiece")
