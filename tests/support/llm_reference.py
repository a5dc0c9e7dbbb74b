"""The reference for LLM serving tests: transformers `generate` on the tiny offline Llama."""

from __future__ import annotations

import torch

from uip.core.paths import artifacts_root


def greedy_texts(prompts: list[str], max_new_tokens: int) -> dict[str, str]:
    """prompt -> the text of its greedy continuation (special tokens skipped)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = artifacts_root() / "llm-tiny"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = {}
    with torch.no_grad():
        for p in prompts:
            ids = tok(p)["input_ids"]
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 do_sample=False)
            out[p] = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
    return out
