"""The engine's token budget per step (`max_batch_tokens`) against 64-stream throughput, in
process, on one loaded engine (GPU machine, after `STAGE=prepare bash benchmarks/gpu/run_llm.sh`).

    python benchmarks/gpu/llm_budget_sweep.py /tmp/llm-repo [--budgets 192,256,320]
        [--concurrency 64] [--json OUT]

The engine is configured as the repository's `llm_engine` with decode graphs up to the largest
budget; for each budget the scheduler's limit is set and the closed loop of
`uip.bench.llm_inprocess.run_one_consumer` runs twice: distinct random prompts (no prefix
reuse) and perf_analyzer's 64 prompts of `uip bench llm_bls` cycled (their first block found
in the prefix cache). Per run: tokens/s over the constant-concurrency window, p50 time to first
token, engine steps by path, the mean step time and the engine thread's host time per step
by phase. `--rules whole,block` runs each budget twice more: a prompt found whole in the cache
recomputes its last token only (the engine's rule) or, as before, its whole last block. Then
the GPU time of one replay of each decode-graph bucket. Prints a table and `best_budget=N`
(the best mean of the two workloads).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from gpu_timing import cuda_ms  # benchmarks/gpu, this script's folder

from uip.bench.llm import engine_config, prompt_ids, prompts
from uip.bench.llm_inprocess import run_one_consumer
from uip.llm.kv_blocks import BlockManager
from uip.llm.paged_runtime import PagedEngine

# how a prompt found whole in the prefix cache is matched: the engine's rule, or the former one
# (its last token's block recomputed whole: the match stops one token short)
_RULES = {
    "whole": lambda bm: functools.partial(BlockManager.match_prefix, bm),
    "block": lambda bm: lambda table, tokens: BlockManager.match_prefix(bm, table, tokens[:-1]),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repository", type=Path)
    p.add_argument("--budgets", default="192,256,320")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--json", default="llm-budget-sweep.json")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test (no graphs)")
    p.add_argument("--rules", default="whole", help="whole,block: see the module's doc")
    a = p.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    top = max(budgets)
    config, model_dir = engine_config(a.repository, a.device, max_batch_tokens=top)
    config = replace(config, graph_max_rows=top)
    workload = prompt_ids(prompts(a.prompt_tokens, 64, model_dir), model_dir)
    print("perf_analyzer's prompts, token counts:", sorted({len(w) for w in workload}))
    t0 = time.perf_counter()
    engine = PagedEngine(model_dir, config)
    out: dict = {"start_s": round(time.perf_counter() - t0, 1), "runs": []}
    try:
        run_one_consumer(engine, a.concurrency, a.prompt_tokens, 8, 1, vocab=engine.vocab_size)
        workloads = (("distinct", None), ("perf_analyzer's 64", workload))
        for b, rule, (name, work) in itertools.product(budgets, a.rules.split(","), workloads):
            engine.scheduler.max_batch_tokens = b
            engine.blocks.match_prefix = _RULES[rule](engine.blocks)
            before, host0 = dict(engine.steps_by_path), dict(engine.step_seconds)
            s0, t = engine.stats(), time.perf_counter()
            r = run_one_consumer(engine, a.concurrency, a.prompt_tokens, 128, 4,
                                 vocab=engine.vocab_size, seed=b, workload=work)
            seconds = time.perf_counter() - t
            steps = {k: v - before.get(k, 0) for k, v in engine.steps_by_path.items()
                     if v - before.get(k, 0)}
            n = max(sum(steps.values()), 1)
            row = {"budget": b, "rule": rule, "prompts": name, "tok_s": r.output_tokens_per_s,
                   "ttft_p50_ms": r.ttft_p50_ms, "steps": steps,
                   "ms_per_step": round(seconds * 1000 / n, 2),
                   "host_ms_per_step": {k: round((v - host0[k]) * 1000 / n, 3)
                                        for k, v in engine.step_seconds.items()},
                   "tokens_per_step": round((engine.stats().tokens_generated
                                             - s0.tokens_generated) / n, 1)}
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
        g = engine.graphs
        out["replay_ms"] = {b: round(cuda_ms(g._graphs[b, False].replay, reps=20), 3)
                            for b in (g.buckets if g else []) if b >= 32}
        print("replay ms by bucket:", out["replay_ms"], flush=True)
    finally:
        engine.shutdown()
        Path(a.json).write_text(json.dumps(out, indent=1))
    print("| budget | rule | prompts | tok/s | TTFT p50 ms | ms/step | tokens/step | host ms/step"
          " | steps by path |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    for r in out["runs"]:
        print(f"| {r['budget']} | {r['rule']} | {r['prompts']} | {r['tok_s']:.0f} | "
              f"{r['ttft_p50_ms']} | {r['ms_per_step']} | {r['tokens_per_step']} | "
              f"{r['host_ms_per_step']} | {r['steps']} |")
    mean = {b: statistics.mean(r["tok_s"] for r in out["runs"] if r["budget"] == b)
            for b in budgets}
    print(f"best_budget={max(mean, key=mean.get)}")


if __name__ == "__main__":
    main()
