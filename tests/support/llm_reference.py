"""The reference for LLM serving tests: transformers `generate` on the tiny offline Llama."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


def with_late_joiners(prompts: list[str], generate: Callable[[str, Callable[[str], None]], str]
                      ) -> list[str]:
    """`generate(prompt, on_delta) -> text` for every prompt at once, in two halves: the first
    half starts, and once half of those stream a first delta the second half joins them
    mid-flight. The texts, in prompt order."""
    early_n = len(prompts) // 2
    decoding = threading.Semaphore(0)  # released once per early stream's first delta
    joined = threading.Event()

    def one(prompt: str, late: bool) -> str:
        if late:  # the second half joins while the first half is decoding
            assert joined.wait(timeout=120)
        first: list[str] = []

        def on_delta(delta: str) -> None:
            if not late and not first:
                first.append(delta)
                decoding.release()

        return generate(prompt, on_delta)

    with ThreadPoolExecutor(len(prompts)) as pool:
        early = [pool.submit(one, p, False) for p in prompts[:early_n]]
        late = [pool.submit(one, p, True) for p in prompts[early_n:]]
        for _ in range(early_n // 2):
            assert decoding.acquire(timeout=120)
        joined.set()
        return [f.result(timeout=300) for f in early + late]
