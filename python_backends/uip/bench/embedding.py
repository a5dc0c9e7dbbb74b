"""The `embedding` benchmark profile: perf_analyzer inputs and the in-process reference."""

from __future__ import annotations

import time

from uip.core.paths import artifacts_root

TEXT = "The quick brown fox jumps over the lazy dog while Triton batches requests."
PERF_ARGS = ["--shape", "text_input:1", "--string-data", TEXT]


def perf_args(**_) -> list[str]:
    return PERF_ARGS


def inprocess(concurrency: list[int], device: str = "cpu", seconds: float = 3.0, **_
              ) -> dict[int, float]:
    """Texts/s of the same encoder in-process, with batches as large as the concurrency."""
    from uip.embedding.encoder import SentenceEncoder

    enc = SentenceEncoder(artifacts_root() / "embedding", device=device)
    enc.encode([TEXT])  # warm-up
    out = {}
    for c in concurrency:
        batch = [TEXT] * c
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            enc.encode(batch)
            n += c
        out[c] = n / (time.perf_counter() - start)
    return out
