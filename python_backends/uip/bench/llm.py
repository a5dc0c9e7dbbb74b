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


def perf_args(max_tokens: int = MAX_TOKENS) -> list[str]:
    data = {"data": [{
        "text_input": {"content": [PROMPT], "shape": [1]},
        "max_tokens": {"content": [max_tokens], "shape": [1]},
        "stream": {"content": [True], "shape": [1]},
    }]}
    path = Path(tempfile.mkdtemp(prefix="uip-bench-")) / "llm_input.json"
    path.write_text(json.dumps(data))
    return ["--streaming", "--input-data", str(path)]


def calibrate(grpc_url: str, model: str, max_tokens: int = MAX_TOKENS) -> int:
    """Output tokens of one benchmark request (greedy, so every request makes the same)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from uip.clients.tensors import grpc_inputs

    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = grpc_inputs({"text_input": np.array([[PROMPT.encode()]], dtype=object),
                          "max_tokens": np.array([[max_tokens]], dtype=np.int32),
                          "return_num_output_tokens": np.array([[True]])})
    results: list = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        import time

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(e is not None for _, e in results):
                raise RuntimeError(str(next(e for _, e in results if e is not None)))
            done = [r for r, _ in results if r is not None
                    and r.get_response().parameters.get("triton_final_response") is not None
                    and r.get_response().parameters["triton_final_response"].bool_param]
            if done:
                break
            time.sleep(0.05)
    finally:
        client.stop_stream()
    counts = [r.as_numpy("num_output_tokens") for r, _ in results if r is not None]
    counts = [int(c.reshape(-1)[0]) for c in counts if c is not None]
    if not counts:
        raise RuntimeError(f"{model} returned no num_output_tokens")
    return max(counts)


def ttft(grpc_url: str, model: str, concurrency: list[int], requests_per_client: int = 2,
         max_tokens: int = MAX_TOKENS) -> dict[int, float]:
    """p50 time (ms) to the first streamed response through Triton: `c` clients each sending
    `requests_per_client` requests back to back (the in-process reference's closed loop)."""
    return {c: _ttft_p50(grpc_url, model, c, requests_per_client, max_tokens)
            for c in concurrency}


def _ttft_p50(grpc_url: str, model: str, clients: int, requests_per_client: int,
              max_tokens: int) -> float:
    import statistics
    import threading
    import time

    from uip.clients.llm import GrpcStream

    samples: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests_per_client):
            start = time.perf_counter()
            first = None
            with GrpcStream(grpc_url, model, PROMPT, max_tokens=max_tokens) as stream:
                for _ in stream.responses(timeout=600):
                    first = first or time.perf_counter() - start
            with lock:
                samples.append(first if first is not None else time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(statistics.median(samples) * 1000, 1)


def inprocess(concurrency: list[int], device: str = "cpu", model_dir: Path | None = None,
              num_blocks: int = 256, max_batch_tokens: int = 512,
              max_tokens: int = MAX_TOKENS, **_) -> dict[int, dict[str, float]]:
    """Output tokens/s and p50 time to first token (ms) of the same torch engine in-process
    (closed loop, `c` clients)."""
    from uip.bench.llm_inprocess import run
    from uip.core.paths import artifacts_root
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    engine = PagedEngine(model_dir or artifacts_root() / "llm-tiny", PagedEngineConfig(
        num_blocks=num_blocks, page_size=64, max_batch_tokens=max_batch_tokens, device=device))
    try:
        run(engine, 1, max_new_tokens=8, requests_per_client=1, vocab=engine.vocab_size)
        out = {}
        for c in concurrency:
            r = run(engine, c, max_new_tokens=max_tokens, requests_per_client=2,
                    vocab=engine.vocab_size)
            out[c] = {"per_s": r.output_tokens_per_s, "ttft_ms": r.ttft_p50_ms}
        return out
    finally:
        engine.shutdown()
