"""Chat messages -> the prompt text an LLM's tokenizer expects (its own Jinja chat template).

The template comes from the checkpoint folder (`chat_template.jinja`, else the
`chat_template` of `tokenizer_config.json`) and renders in Jinja's sandbox, as transformers'
`apply_chat_template` does. llm_bls tokenizes its text input with special tokens, so a BOS the
template writes is dropped here when the tokenizer adds one itself (BOS appears once).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from uip.core.paths import resolve_artifact
from uip.gateway.errors import ApiError
from uip.llm.tokenizer import TextTokenizer


class ChatTemplateError(ValueError):
    """The messages cannot be rendered by the model's template (a client error)."""


class ChatFormatter:
    def __init__(self, folder: Path):
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        jinja_path = folder / "chat_template.jinja"
        source = jinja_path.read_text() if jinja_path.is_file() else config.get("chat_template")
        if not isinstance(source, str):
            raise FileNotFoundError(f"{folder}: no chat template (chat_template.jinja or "
                                    "tokenizer_config.json's chat_template)")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(source)
        self.tokenizer = TextTokenizer.from_folder(folder)
        self._specials = {k: _text(config.get(k)) or "" for k in ("bos_token", "eos_token")}
        bos = self.tokenizer.bos_token_id
        self._strip_bos = bos is not None and self.tokenizer.encode("")[:1] == [bos]

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            text = self._template.render(messages=messages, add_generation_prompt=True,
                                         **self._specials)
        except TemplateError as e:
            raise ChatTemplateError(f"the model's chat template refused the messages: {e}") \
                from None
        bos = self._specials["bos_token"]
        if self._strip_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    def count_tokens(self, text: str) -> int:
        """Prompt tokens as llm_bls counts them (special tokens included)."""
        return len(self.tokenizer.encode(text))


def _text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@lru_cache(maxsize=16)
def _formatter(artifact: str) -> ChatFormatter:
    return ChatFormatter(resolve_artifact(artifact))


def formatter_for(artifact: str) -> ChatFormatter:
    """The formatter of an artifact folder (relative to the artifacts root), loaded once;
    503 while the artifact is missing."""
    try:
        return _formatter(artifact)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise ApiError(503, f"tokenizer artifact {artifact!r} cannot be loaded: {e}") from None


def render(artifact: str, messages: list[dict[str, str]]) -> str:
    """The chat prompt; a template that refuses the messages is a 400."""
    try:
        return formatter_for(artifact).render(messages)
    except ChatTemplateError as e:
        raise ApiError(400, str(e), "messages") from None


@lru_cache(maxsize=16)
def tokenizer_for(artifact: str) -> TextTokenizer:
    """An artifact's tokenizer (token counts for usage), loaded once."""
    return TextTokenizer.from_folder(resolve_artifact(artifact))
