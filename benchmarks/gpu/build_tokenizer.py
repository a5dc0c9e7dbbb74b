"""A Llama-3-sized (128,256 ids) byte-level BPE tokenizer trained offline, so that every id an
8B-shaped model emits decodes to text (time to first token is measured to the first text).

    python benchmarks/gpu/build_tokenizer.py DEST [--vocab-size 128256]

Training text: the tiny model's corpus plus enough distinct pseudo-words (seeded syllable
strings, each written several times) for BPE to reach the vocabulary size. About a minute on
2 cores. DEST gets the tokenizer files only (copy a model's weights beside them).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from uip.artifacts.llm_tiny import _SYLLABLES, build_tokenizer, corpus


def training_text(vocab_size: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = {"".join(rng.choice(_SYLLABLES) for _ in range(3 + rng.randrange(2)))
             for _ in range(vocab_size)}
    lines = [" ".join(rng.sample(sorted(words), len(words))) for _ in range(3)]
    return corpus() + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dest", type=Path)
    p.add_argument("--vocab-size", type=int, default=128256)
    a = p.parse_args()
    t = time.time()
    tok = build_tokenizer(a.vocab_size, training_text(a.vocab_size))
    tok.save_pretrained(a.dest)
    print(f"tokenizer: {len(tok)} ids in {time.time() - t:.0f} s -> {a.dest}")


if __name__ == "__main__":
    main()
