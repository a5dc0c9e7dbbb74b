"""The tiny LLM's tokenizer for the text-side unit tests (byte-level BPE, BOS added)."""

from __future__ import annotations

import functools

# Non-ASCII text whose characters the tiny tokenizer splits over several byte-level tokens.
MULTIBYTE = ["東京 😀 👋🏽", "naïve café Zürich", "привет мир", "👨‍👩‍👧 ∑ ∞ ≤ ≥ →",
             "こんにちは世界", "Łódź Kraków 🚀🔥", "鼎鼐 龘 𠜎 😂😂"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """From artifacts/llm-tiny when built (as the server loads it), else built in memory."""
    from uip.core.paths import artifacts_root

    folder = artifacts_root() / "llm-tiny"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    from uip.artifacts.llm_tiny import build_tokenizer

    return build_tokenizer()
