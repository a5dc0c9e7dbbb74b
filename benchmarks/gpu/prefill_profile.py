"""GPU machine: where the time to first token goes at concurrency 1 (our PagedEngine).

    PYTHONPATH=python_backends python benchmarks/gpu/prefill_profile.py MODEL_DIR [--tokens 128]

Times single requests (a prompt of --tokens random ids, one output token) through the engine,
then one eager prefill forward in this thread: wall clock, GPU time (CUDA events) and a
torch.profiler table (CPU and CUDA time per op, kernel count). $OUT/prefill.json and
$OUT/prefill-profile.txt; a summary last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from uip.llm.engine import GenerationRequest
from uip.llm.paged_attention import build_meta, to_device
from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

OUT = Path(os.environ.get("OUT", "."))


def ttft_ms(engine: PagedEngine, prompt: list[int]) -> float:
    t = time.perf_counter()
    rid = engine.enqueue(GenerationRequest(input_ids=prompt, max_new_tokens=1, streaming=True))
    while True:
        rs = engine.await_responses(rid, timeout=60)
        if any(r.tokens for r in rs) or rs[-1].is_final:
            return (time.perf_counter() - t) * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--tokens", type=int, default=128)
    a = p.parse_args()
    engine = PagedEngine(a.model, PagedEngineConfig(
        num_blocks=1024, page_size=64, max_batch_tokens=8192, max_requests_per_batch=64,
        max_context=2048, dtype="bfloat16", device="cuda"))
    rng = random.Random(0)
    res: dict = {}
    try:
        prompts = [[rng.randrange(8, engine.vocab_size) for _ in range(a.tokens)]
                   for _ in range(12)]
        times = [ttft_ms(engine, q) for q in prompts]
        res["engine_ttft_ms"] = [round(t, 2) for t in times]
        runner, n = engine.runner, a.tokens
        blocks = list(range(-(-n // 64)))
        slots = list(range(n))

        def forward():
            meta = build_meta(slots, [], [], [(0, n, n, blocks)], 64, runner.device)
            return runner.forward(to_device(prompts[0], runner.device),
                                  to_device(list(range(n)), runner.device), meta,
                                  engine.cache, to_device([n - 1], runner.device))

        with torch.inference_mode():
            for _ in range(3):
                forward()
            torch.cuda.synchronize()
            walls, gpus = [], []
            for _ in range(10):
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t = time.perf_counter()
                st.record()
                forward()
                en.record()
                launched = time.perf_counter()
                en.synchronize()
                walls.append(((launched - t) * 1000, (time.perf_counter() - t) * 1000))
                gpus.append(st.elapsed_time(en))
            res["forward_launch_ms"] = statistics.median(w[0] for w in walls)
            res["forward_wall_ms"] = statistics.median(w[1] for w in walls)
            res["forward_gpu_ms"] = statistics.median(gpus)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                forward()
                torch.cuda.synchronize()
            ka = prof.key_averages()
            (OUT / "prefill-profile.txt").write_text(
                ka.table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=60)
                + "\n\n" + ka.table(sort_by="cuda_time_total", row_limit=25,
                                    max_name_column_width=60))
            res["kernels"] = sum(e.count for e in ka if (getattr(e, "device_time_total", 0)
                                                          or 0) > 0 and not e.key.startswith(
                                                              ("aten::", "cuda")))
    finally:
        engine.shutdown()
    (OUT / "prefill.json").write_text(json.dumps(res, indent=1))
    t = res["engine_ttft_ms"]
    print(f"engine TTFT ({a.tokens} prompt tokens): median {statistics.median(t):.1f} ms, "
          f"min {min(t):.1f}; one eager prefill forward: launch {res['forward_launch_ms']:.1f} "
          f"ms, wall {res['forward_wall_ms']:.1f} ms, GPU {res['forward_gpu_ms']:.1f} ms, "
          f"~{res['kernels']} kernels")


if __name__ == "__main__":
    main()
