"""The `llm` / `llm_bls` benchmark profile: perf_analyzer streaming and the in-process engine.

perf_analyzer counts requests; every request here has the same prompt and greedy decoding, so
each generates the same number of tokens, measured once over gRPC before the sweep
(`calibrate`). Output tokens/s = requests/s x that number.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# models to load for each benchmarked model (an ensemble loads its steps itself; BLS does not)
LOAD = {"llm": ["llm"], "llm_bls": ["llm_bls", "llm_engine"]}
PROMPT = "Write a long story about a lighthouse keeper who collects rare shells."
MAX_TOKENS = 128


def prompts(prompt_tokens: int = 0, distinct_prompts: int = 1,
            tokenizer_dir: Path | None = None, model_repository: Path | None = None
            ) -> list[str]:
    """The workload's prompts: PROMPT alone (prompt_tokens 0), or `distinct_prompts` texts
    of about `prompt_tokens` tokens each (random ids of the served model's tokenizer, BOS
    counted, decoded to text; seed 0), so that the prefix cache shares nothing between them.
    The tokenizer: `tokenizer_dir`, else that of the repository's llm_engine artifact."""
    if not prompt_tokens:
        return [PROMPT]
    import random

    from transformers import AutoTokenizer

    from uip.core.paths import DEFAULT_REPOSITORY

    if tokenizer_dir is None:
        tokenizer_dir = engine_config(model_repository or DEFAULT_REPOSITORY, "cpu")[1]
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    rng = random.Random(0)
    texts = []
    for _ in range(distinct_prompts):
        text = tok.decode([rng.choice(ids) for _ in range(prompt_tokens - 1)])
        for _ in range(2):  # decoded ids may encode to more tokens: trim to the count
            text = tok.decode(tok(text, add_special_tokens=False).input_ids[:prompt_tokens - 1])
        texts.append(text)
    return texts


def perf_args(max_tokens: int = MAX_TOKENS, texts: list[str] | None = None, **_) -> list[str]:
    """perf_analyzer streaming inputs: one data entry per prompt (it cycles through them)."""
    data = {"data": [{
        "text_input": {"content": [text], "shape": [1]},
        "max_tokens": {"content": [max_tokens], "shape": [1]},
        "stream": {"content": [True], "shape": [1]},
    } for text in texts or [PROMPT]]}
    path = Path(tempfile.mkdtemp(prefix="uip-bench-")) / "llm_input.json"
    path.write_text(json.dumps(data))
    return ["--streaming", "--input-data", str(path)]


def calibrate(grpc_url: str, model: str, max_tokens: int = MAX_TOKENS,
              texts: list[str] | None = None, **_) -> float:
    """Mean output tokens of one benchmark request over the workload's prompts (greedy, so a
    prompt always makes the same number), all sent at once on one stream; prints the mean
    prompt tokens too."""
    import time

    import tritonclient.grpc as grpcclient

    from uip.clients.llm import grpc_inputs, is_final, parameters

    texts = texts or [PROMPT]
    client = grpcclient.InferenceServerClient(grpc_url)
    results: list = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        for i, text in enumerate(texts):
            inputs = grpc_inputs(text, parameters(max_tokens=max_tokens,
                                                  return_num_input_tokens=True,
                                                  return_num_output_tokens=True))
            client.async_stream_infer(model, inputs, request_id=f"calibrate-{i}",
                                      enable_empty_final_response=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(e is not None for _, e in results):
                raise RuntimeError(str(next(e for _, e in results if e is not None)))
            if sum(is_final(r) for r, _ in list(results)) >= len(texts):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{model}: calibration requests unfinished after 600 s")
    finally:
        client.stop_stream()
    counts: dict[str, dict[str, int]] = {}
    for r, _ in results:
        for name in ("num_input_tokens", "num_output_tokens"):
            value = r.as_numpy(name) if r is not None else None
            if value is not None:
                seen = counts.setdefault(r.get_response().id, {})
                seen[name] = max(seen.get(name, 0), int(value.reshape(-1)[0]))
    out = [c["num_output_tokens"] for c in counts.values() if "num_output_tokens" in c]
    if len(out) < len(texts):
        raise RuntimeError(f"{model} returned num_output_tokens for {len(out)} of "
                           f"{len(texts)} requests")
    ins = [c["num_input_tokens"] for c in counts.values() if "num_input_tokens" in c]
    print(f"calibration: {len(texts)} prompts, mean {sum(ins) / max(len(ins), 1):.1f} prompt "
          f"tokens, mean {sum(out) / len(out):.1f} output tokens")
    return sum(out) / len(out)


def ttft(grpc_url: str, model: str, concurrency: list[int], samples: int = 16,
         max_tokens: int = MAX_TOKENS, texts: list[str] | None = None, **_
         ) -> dict[int, float]:
    """p50 time (ms) to the first streamed response through Triton: `c` clients, each with
    its own gRPC stream kept open (as a streaming client keeps its channel), sending requests
    back to back until `samples` requests in all (at least 2 per client) have been timed;
    request k of client i uses prompt (i * per_client + k) of the workload."""
    return {c: _ttft_p50(grpc_url, model, c, max(2, -(-samples // c)), max_tokens,
                         texts or [PROMPT]) for c in concurrency}


def _ttft_p50(grpc_url: str, model: str, clients: int, requests_per_client: int,
              max_tokens: int, texts: list[str]) -> float:
    import queue
    import statistics
    import threading
    import time

    import tritonclient.grpc as grpcclient

    from uip.clients.llm import grpc_inputs, is_final, parameters

    samples: list[float] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        events: queue.Queue = queue.Queue()
        conn = grpcclient.InferenceServerClient(grpc_url)
        conn.start_stream(callback=lambda result, error: events.put(
            (result, error, time.perf_counter())))
        try:
            for k in range(requests_per_client):
                text = texts[(i * requests_per_client + k) % len(texts)]
                inputs = grpc_inputs(text, parameters(max_tokens=max_tokens, stream=True))
                start = time.perf_counter()
                conn.async_stream_infer(model, inputs, enable_empty_final_response=True)
                first = None
                while True:
                    result, error, at = events.get(timeout=600)
                    if error is not None:
                        raise RuntimeError(str(error))
                    first = first or at - start
                    if is_final(result):
                        break
                with lock:
                    samples.append(first)
        finally:
            conn.stop_stream()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(samples) < clients * requests_per_client:
        raise RuntimeError(f"{model}: {clients * requests_per_client - len(samples)} TTFT "
                           "requests failed")
    return round(statistics.median(samples) * 1000, 1)


def engine_config(model_repository: Path, device: str, **overrides):
    """llm_engine's PagedEngineConfig as the repository's rendered config gives it (the
    in-process reference runs the engine Triton runs), on `device`; and its model folder.
    Without an llm_engine, llm_bls's (which then holds the engine: `engine_transport: local`)."""
    from dataclasses import replace

    from google.protobuf import json_format

    from uip.core.settings import ModelSettings
    from uip.llm.paged_runtime import PagedEngineConfig
    from uip.repo.needed import read_config

    holder = "llm_engine" if (model_repository / "llm_engine").is_dir() else "llm_bls"
    config = json_format.MessageToDict(read_config(model_repository / holder / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    settings = ModelSettings.from_config(config)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(PagedEngineConfig.from_settings(settings), device=device, **given), \
        settings.artifact


def prompt_ids(texts: list[str], model_dir: Path) -> list[list[int]]:
    """perf_analyzer's prompts as token ids, tokenized as llm_bls does by default (the
    artifact's `TextTokenizer`, special tokens added)."""
    from uip.llm.tokenizer import TextTokenizer

    tok = TextTokenizer.from_folder(model_dir)
    return [tok.encode(t) for t in texts]


def inprocess(concurrency: list[int], device: str = "cpu", model_dir: Path | None = None,
              num_blocks: int | None = None, max_batch_tokens: int | None = None,
              max_tokens: int = MAX_TOKENS, prompt_tokens: int = 0,
              model_repository: Path | None = None, texts: list[str] | None = None,
              **_) -> dict[int, dict[str, float]]:
    """Output tokens/s and p50 time to first token (ms) of the same torch engine in-process,
    configured as the repository's llm_engine: closed loop, `c` clients of 4 requests each
    (tokens/s over the window where all `c` are in flight, as perf_analyzer counts),
    read by one consumer thread (as Triton's `llm_engine` dispatcher reads it); the `texts`
    perf_analyzer sends, tokenized as the server does and cycled the same way (so the prefix
    cache sees the same reuse), else distinct random prompts of `prompt_tokens` tokens (0: as
    many as PROMPT has)."""
    from uip.bench.llm_inprocess import run_one_consumer
    from uip.core.paths import DEFAULT_REPOSITORY
    from uip.llm.paged_runtime import PagedEngine

    config, artifact = engine_config(model_repository or DEFAULT_REPOSITORY, device,
                                     num_blocks=num_blocks, max_batch_tokens=max_batch_tokens)
    model_dir = model_dir or artifact
    if not prompt_tokens:
        from transformers import AutoTokenizer

        prompt_tokens = len(AutoTokenizer.from_pretrained(str(model_dir))(PROMPT).input_ids)
    workload = prompt_ids(texts, model_dir) if texts else None
    engine = PagedEngine(model_dir, config)
    try:
        run_one_consumer(engine, 1, prompt_tokens, 8, 1, vocab=engine.vocab_size, seed=1)
        out = {}
        for c in concurrency:
            run_one_consumer(engine, c, prompt_tokens, 8, 1, vocab=engine.vocab_size, seed=2)
            r = run_one_consumer(engine, c, prompt_tokens, max_tokens, 4,
                                 vocab=engine.vocab_size, workload=workload)
            out[c] = {"per_s": r.output_tokens_per_s, "ttft_ms": r.ttft_p50_ms}
        return out
    finally:
        engine.shutdown()
