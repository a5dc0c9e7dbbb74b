"""In-process benchmark of the torch `llm_engine` runtime (no Triton): output tokens/s and
time to first token at several concurrencies, to compare with perf_analyzer through Triton.

    .venv/bin/python -m uip.bench.llm_inprocess [--model-dir DIR] [--concurrency 1 8 32]
        [--prompt-tokens 32] [--max-new-tokens 128] [--requests-per-client 2] [--json OUT]
        [--device cuda --dtype bfloat16 --max-requests-per-batch 64 --no-cuda-graphs]
        [--no-torch-compile]
        [--warmup-tokens 8]

Closed loop: `c` clients each send requests back to back (streaming, so the first token's
arrival is seen); prompts are distinct seeded random token ids (no prefix sharing).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from uip.core.paths import artifacts_root
from uip.llm.engine import Engine, GenerationRequest


@dataclass
class BenchResult:
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_mean_ms: float  # mean time between tokens of one request, after the first


def _one(engine: Engine, prompt: list[int], n: int, lora_name: str | None = None
         ) -> tuple[float, int, float]:
    """(time to first token, tokens, decode seconds after the first token) of one request."""
    start = time.perf_counter()
    rid = engine.enqueue(GenerationRequest(input_ids=prompt, max_new_tokens=n, streaming=True,
                                           lora_name=lora_name))
    first = None
    count = 0
    while True:
        results = engine.await_responses(rid, timeout=60)
        if not results:
            raise TimeoutError(f"request {rid}: no result in 60 s")
        for r in results:
            if r.error:
                raise RuntimeError(r.error)
            if r.tokens and first is None:
                first = time.perf_counter()
            count += len(r.tokens)
        if results[-1].is_final:
            end = time.perf_counter()
            first = first or end
            return first - start, count, end - first


def _summary(concurrency: int, samples: list[tuple[float, int, float]], seconds: float
             ) -> BenchResult:
    tokens = sum(s[1] for s in samples)
    ttfts = sorted(s[0] * 1000 for s in samples)
    itls = [s[2] * 1000 / (s[1] - 1) for s in samples if s[1] > 1]
    return BenchResult(
        concurrency=concurrency,
        requests=len(samples),
        output_tokens=tokens,
        seconds=round(seconds, 3),
        output_tokens_per_s=round(tokens / seconds, 1),
        ttft_p50_ms=round(statistics.median(ttfts), 1),
        ttft_p90_ms=round(ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))], 1),
        itl_mean_ms=round(statistics.fmean(itls), 2) if itls else 0.0,
    )


def run_one_consumer(engine: Engine, concurrency: int, prompt_tokens: int = 32,
                     max_new_tokens: int = 128, requests_per_client: int = 2,
                     vocab: int = 4096, seed: int = 0,
                     workload: list[list[int]] | None = None) -> BenchResult:
    """The same closed loop driven by one thread through `Engine.await_any` (as Triton's
    `llm_engine` dispatcher reads the engine), instead of a thread per client. Tokens/s is
    counted, as perf_analyzer does, over a window of constant concurrency: from the first
    request's end (every client had one in flight) to the last request's start (no client
    ran out yet); the whole run where that window is empty (one request per client).
    `workload`: the prompts to cycle through (as perf_analyzer cycles its input data), instead
    of distinct seeded random ones."""
    rng = random.Random(seed)
    total = concurrency * requests_per_client
    prompts = ([workload[i % len(workload)] for i in range(total)] if workload else
               [[rng.randrange(8, vocab) for _ in range(prompt_tokens)] for _ in range(total)])
    live: dict[int, list] = {}  # request id -> [start, first token time, tokens]
    samples: list[tuple[float, int, float]] = []

    def send(prompt: list[int]) -> None:
        t = time.perf_counter()
        rid = engine.enqueue(GenerationRequest(input_ids=prompt, max_new_tokens=max_new_tokens,
                                               streaming=True))
        live[rid] = [t, None, 0]

    start = time.perf_counter()
    queued = list(reversed(prompts))
    for _ in range(min(concurrency, len(queued))):
        send(queued.pop())
    arrivals: list[tuple[float, int]] = []  # (time, tokens) of every result
    window = [0.0, 0.0]  # first end, last start
    while live:
        results = engine.await_any(timeout=60)
        if not results:
            raise TimeoutError("no result in 60 s")
        now = time.perf_counter()
        arrivals.append((now, sum(len(r.tokens) for r in results)))
        for r in results:
            if r.error:
                raise RuntimeError(r.error)
            state = live[r.request_id]
            if r.tokens and state[1] is None:
                state[1] = now
            state[2] += len(r.tokens)
            if r.is_final:
                del live[r.request_id]
                first = state[1] or now
                samples.append((first - state[0], state[2], now - first))
                window[0] = window[0] or now
                if queued:
                    send(queued.pop())
                    window[1] = now
    result = _summary(concurrency, samples, time.perf_counter() - start)
    if window[1] > window[0]:
        n = sum(k for t, k in arrivals if window[0] < t <= window[1])
        result.output_tokens_per_s = round(n / (window[1] - window[0]), 1)
    return result


def run(engine: Engine, concurrency: int, prompt_tokens: int = 32, max_new_tokens: int = 128,
        requests_per_client: int = 2, vocab: int = 4096, seed: int = 0,
        adapters: list[str | None] | None = None) -> BenchResult:
    """`adapters`: client i's requests use LoRA adapter adapters[i % len] (None: the base)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(8, vocab) for _ in range(prompt_tokens)]
               for _ in range(concurrency * requests_per_client)]
    samples: list[tuple[float, int, float]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for k in range(requests_per_client):
                s = _one(engine, prompts[i * requests_per_client + k], max_new_tokens,
                         adapters[i % len(adapters)] if adapters else None)
                with lock:
                    samples.append(s)
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return _summary(concurrency, samples, seconds)


def main(argv: list[str] | None = None) -> list[BenchResult]:
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=artifacts_root() / "llm-tiny")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--num-blocks", type=int, default=256)
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--max-batch-tokens", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), bfloat16, ...")
    p.add_argument("--max-requests-per-batch", type=int, default=None,
                   help="running sequences (and the largest CUDA-graph bucket); None = 256")
    p.add_argument("--max-context", type=int, default=None,
                   help="prompt + output tokens (the CUDA graphs' block-table width)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on a GPU")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="GPU: leave the elementwise ops unfused (no torch.compile)")
    p.add_argument("--warmup-tokens", type=int, default=0,
                   help="before each concurrency, one untimed round of this many new tokens")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.model_dir == artifacts_root() / "llm-tiny":
        from uip import artifacts

        artifacts.ensure(["llm-tiny"])
    engine = PagedEngine(args.model_dir, PagedEngineConfig(
        num_blocks=args.num_blocks, page_size=args.page_size,
        max_batch_tokens=args.max_batch_tokens, device=args.device,
        torch_threads=args.torch_threads, dtype=args.dtype,
        max_requests_per_batch=args.max_requests_per_batch, max_context=args.max_context,
        cuda_graphs=not args.no_cuda_graphs, torch_compile=not args.no_torch_compile))
    try:
        results = []
        for c in args.concurrency:
            if args.warmup_tokens:
                run(engine, c, args.prompt_tokens, args.warmup_tokens, 1,
                    vocab=engine.vocab_size, seed=1)
            r = run(engine, c, args.prompt_tokens, args.max_new_tokens, args.requests_per_client,
                    vocab=engine.vocab_size)
            results.append(r)
            print(json.dumps(asdict(r)), flush=True)
    finally:
        engine.shutdown()
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
