"""A checkpoint's tokenizer through `tokenizers` alone: what the text models need, no torch.

`AutoTokenizer` in transformers 5 imports torch (~180 MB per process); llm_preprocess,
llm_postprocess and llm_bls only encode and decode, so they load `tokenizer.json` directly and
read the special tokens from `tokenizer_config.json`. `tests/unit/test_llm_tokenizer.py` holds
it equal to `AutoTokenizer` (ids, decode with and without special tokens) on the artifact;
`tokenizer: transformers` in a spec's parameters loads `AutoTokenizer` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

# transformers' `clean_up_tokenization` (applied on decode when the config asks for it)
_CLEANUPS = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older configs: {"content": "</s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """`tokenizer(text)["input_ids"]`, `encode`, `decode`, `eos_token_id`, `pad_token_id` as a
    transformers fast tokenizer gives them."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any]):
        self._tok = tokenizer
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False))
        self.eos_token_id = self._id(config.get("eos_token"))
        self.pad_token_id = self._id(config.get("pad_token"))
        self.bos_token_id = self._id(config.get("bos_token"))

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextTokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the artifact needs a fast tokenizer "
                                    "(tokenizer.json), or set `tokenizer: transformers`")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(Tokenizer.from_file(str(path)), config)

    def _id(self, token: Any) -> int | None:
        text = _token_text(token)
        return None if text is None else self._tok.token_to_id(text)

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self._cleanup:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text


def load_tokenizer(folder: str | Path, backend: str = "tokenizers"):
    """The artifact's tokenizer: `TextTokenizer` (default) or transformers' `AutoTokenizer`."""
    if backend == "transformers":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    if backend != "tokenizers":
        raise ValueError(f"tokenizer must be 'tokenizers' or 'transformers', not {backend!r}")
    return TextTokenizer.from_folder(folder)


def tokenizer_for(settings) -> Any:
    """The tokenizer of a model's artifact, as its spec's `tokenizer` parameter chooses."""
    return load_tokenizer(settings.artifact_dir(), settings.param("tokenizer", "tokenizers"))
