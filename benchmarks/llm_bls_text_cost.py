"""Host cost of llm_bls's per-token text path, without Triton: the orchestrator's pipeline
(incremental detokenizer + stop strings, `RequestRun.on_chunk`) and the client tensors of one
response (`client_outputs`), one token per engine chunk as at 64 saturated streams.

    python benchmarks/llm_bls_text_cost.py TOKENIZER_DIR [--requests 200] [--tokens 128]

e.g. the 128k tokenizer of benchmarks/gpu/build_tokenizer.py. Prints microseconds per token.
"""

from __future__ import annotations

import argparse
import random
import time

from transformers import AutoTokenizer

from uip.llm.engine_tensors import EngineChunk
from uip.llm.orchestrate import RequestRun, TextPipeline, client_outputs
from uip.llm.preprocess import LlmRequest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tokenizer")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--tokens", type=int, default=128)
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    rng = random.Random(0)
    feed_s = out_s = 0.0
    for _ in range(a.requests):
        req = LlmRequest(prompt="x", input_ids=[1], max_tokens=a.tokens, stream=True,
                         return_num_output_tokens=True)
        sent: list = []
        run = RequestRun(TextPipeline(tok, req), sent.append, lambda: None)
        for i in range(a.tokens):
            chunk = EngineChunk([rng.randrange(8, tok.vocab_size)],
                                "length" if i == a.tokens - 1 else None)
            t = time.perf_counter()
            run.on_chunk(chunk, 0.0)
            feed_s += time.perf_counter() - t
        for resp in sent:
            t = time.perf_counter()
            client_outputs(resp, req)
            out_s += time.perf_counter() - t
    n = a.requests * a.tokens
    print(f"on_chunk (detokenize + stop strings): {feed_s / n * 1e6:.1f} us/token; "
          f"client_outputs: {out_s / n * 1e6:.1f} us/token")


if __name__ == "__main__":
    main()
