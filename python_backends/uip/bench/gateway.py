"""`uip bench gateway`: chat streaming through the gateway vs `llm_bls` over gRPC directly.

Same run, same server, same tokens: the direct path sends the chat-templated prompt the
gateway would render, so both ask llm_bls for the same generation. At each concurrency every
stream runs `requests` generations back to back (asyncio clients in this process:
tritonclient's gRPC aio for the direct path, aiohttp for the gateway's SSE; each client
decodes every message it gets). The two paths alternate in `rounds` (direct, gateway, then
gateway, direct, ...) so a load that drifts on a shared machine falls on both alike; tokens
and seconds are summed over the rounds. TTFT is until the first non-empty text on both paths.
Reported: output tokens/s, the p50 TTFT of each, the gateway's ratio and added p50 TTFT, pooled
and as the median (min, max) of the per-round pairs, and CPU time per token of each process.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
MODEL = "llm_bls"


@dataclass
class Run:
    tokens: int = 0
    ttft_ms: list[float] | None = None
    seconds: float = 0.0
    cpu: dict[str, float] | None = None  # CPU seconds spent meanwhile: client, gateway, server

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def ttft_p50_ms(self) -> float:
        return statistics.median(self.ttft_ms or [0.0])


async def _direct_one(client, prompt: str, max_tokens: int) -> tuple[float, int]:
    from uip.clients.llm import grpc_inputs, parameters

    inputs = grpc_inputs(prompt, parameters(max_tokens=max_tokens, stream=True,
                                            return_num_output_tokens=True))

    async def requests():
        yield {"model_name": MODEL, "inputs": inputs}

    t0, first, tokens = time.perf_counter(), None, 0
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            raise RuntimeError(str(error))
        n = result.as_numpy("num_output_tokens")
        text = result.as_numpy("text_output")
        if first is None and text is not None and text.reshape(-1)[0].decode():
            first = time.perf_counter() - t0
        tokens += int(np.asarray(n).reshape(-1)[0]) if n is not None else 0
    return (first or 0.0) * 1000, tokens


async def _gateway_one(http: aiohttp.ClientSession, url: str, max_tokens: int
                       ) -> tuple[float, int]:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    t0, first, tokens = time.perf_counter(), None, 0
    async with http.post(f"{url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:  # one SSE line at a time
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first or 0.0) * 1000, tokens


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (tritonserver's stubs); 0 if unknown."""
    if pid is None:
        return 0.0
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    return {"client": time.process_time(), **{k: cpu_seconds(p) for k, p in pids.items()}}


async def _sweep(one, concurrency: int, requests: int, pids: dict[str, int | None]) -> Run:
    async def stream() -> list[tuple[float, int]]:
        return [await one() for _ in range(requests)]

    cpu0, t0 = _cpu(pids), time.perf_counter()
    results = [r for rs in await asyncio.gather(*[stream() for _ in range(concurrency)])
               for r in rs]
    seconds, cpu1 = time.perf_counter() - t0, _cpu(pids)
    return Run(sum(n for _, n in results), [t for t, _ in results], seconds,
               {k: cpu1[k] - cpu0[k] for k in cpu0})


def _summed(runs: list[Run]) -> Run:
    return Run(sum(r.tokens for r in runs), [t for r in runs for t in r.ttft_ms or []],
               sum(r.seconds for r in runs),
               {k: sum((r.cpu or {}).get(k, 0.0) for r in runs) for k in runs[0].cpu or {}})


def _us_per_token(run: Run, who: str) -> float:
    return (run.cpu or {}).get(who, 0.0) / max(run.tokens, 1) * 1e6


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def _row(c: int, requests: int, runs: dict[str, list[Run]]) -> dict[str, float]:
    """One level's row: pooled tok/s and p50 TTFT over all rounds, and the spread of the
    per-round comparisons (round r's gateway run against round r's direct run, which ran
    right before or after it): on a shared machine the median of those pairs is the figure
    to judge, the min-max says how far the machine let it wander."""
    direct, via = _summed(runs["direct"]), _summed(runs["gateway"])
    if direct.tokens != via.tokens:  # greedy: both paths must make the same tokens
        raise RuntimeError(f"{c} streams: direct made {direct.tokens} tokens, the "
                           f"gateway {via.tokens}; they are not the same work")
    pairs = list(zip(runs["direct"], runs["gateway"], strict=True))
    ratio = _spread([g.tok_per_s / d.tok_per_s for d, g in pairs])
    added = _spread([g.ttft_p50_ms - d.ttft_p50_ms for d, g in pairs])
    return {
        "streams": c,
        "rounds": len(pairs),
        "tokens_per_request": direct.tokens / (c * requests * len(pairs)),
        "direct_tok_per_s": direct.tok_per_s,
        "gateway_tok_per_s": via.tok_per_s,
        "gateway/direct": via.tok_per_s / direct.tok_per_s,
        "ratio_median": ratio[0], "ratio_min": ratio[1], "ratio_max": ratio[2],
        "direct_ttft_p50_ms": direct.ttft_p50_ms,
        "gateway_ttft_p50_ms": via.ttft_p50_ms,
        "added_ttft_p50_ms": via.ttft_p50_ms - direct.ttft_p50_ms,
        "added_ttft_median_ms": added[0], "added_ttft_min_ms": added[1],
        "added_ttft_max_ms": added[2],
        "server_cpu_us_per_token": _us_per_token(direct, "server"),
        "gateway_cpu_us_per_token": _us_per_token(via, "gateway"),
        "direct_client_cpu_us_per_token": _us_per_token(direct, "client"),
        "gateway_client_cpu_us_per_token": _us_per_token(via, "client"),
        "load_1m": os.getloadavg()[0],
    }


def verdict(rows: list[dict[str, float]], ratio: float = 0.95, added_ms: float = 3.0
            ) -> list[str]:
    """The issue's targets per level, judged on the per-round medians."""
    out = []
    for r in rows:
        ok = r["ratio_median"] >= ratio and r["added_ttft_median_ms"] <= added_ms
        out.append(f"{r['streams']:>3} streams: gateway/direct {r['ratio_median']:.3f} "
                   f"[{r['ratio_min']:.3f}..{r['ratio_max']:.3f}] (>= {ratio}), added p50 "
                   f"TTFT {r['added_ttft_median_ms']:+.1f} ms [{r['added_ttft_min_ms']:+.1f}.."
                   f"{r['added_ttft_max_ms']:+.1f}] (<= {added_ms}): "
                   f"{'met' if ok else 'NOT met'}")
    return out


async def compare(grpc_url: str, gateway_url: str, levels: list[int], requests: int,
                  max_tokens: int, rounds: int = 2, gateway_pid: int | None = None,
                  server_pid: int | None = None) -> list[dict[str, float]]:
    """One row per concurrency level (see `_row`). With the pids, also the CPU time per
    output token of the bench's client, the gateway and tritonserver with its stubs (0 where
    unknown): a measure of the gateway's cost that the machine's load does not skew."""
    import tritonclient.grpc.aio as grpcaio

    from uip.gateway.chat_template import formatter_for

    prompt = formatter_for("llm-tiny").render(MESSAGES)
    client = grpcaio.InferenceServerClient(grpc_url)
    rows = []
    pids = {"gateway": gateway_pid, "server": server_pid}
    connector = aiohttp.TCPConnector(limit=0)  # one connection per stream, kept alive
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        await _gateway_one(http, gateway_url, 4)  # warm both paths
        await _direct_one(client, prompt, 4)
        for c in levels:
            paths = {"direct": lambda: _direct_one(client, prompt, max_tokens),
                     "gateway": lambda: _gateway_one(http, gateway_url, max_tokens)}
            runs: dict[str, list[Run]] = {"direct": [], "gateway": []}
            for r in range(rounds):
                for name in (("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")):
                    runs[name].append(await _sweep(paths[name], c, requests, pids))
            rows.append(_row(c, requests, runs))
    await client.close()
    return rows
