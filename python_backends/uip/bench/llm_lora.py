"""In-process benchmark of mixed-adapter LoRA batches in the torch `llm_engine` runtime: the
same engine serves `--streams` streams on the base model and the same number spread over
`--adapters` LoRA adapters (rank `--rank` on every projection), alternating rounds, and reports
output tokens/s of each and their ratio (the target is >= 0.8): per wall-clock second, and per
CPU second of this process (`time.process_time`, all threads), which a machine shared with
other work disturbs far less than the wall clock.

    .venv/bin/python -m uip.bench.llm_lora [--streams 32] [--adapters 8] [--rank 8]
        [--rounds 3] [--max-new-tokens 64] [--torch-threads 2] [--json OUT]

CPU by default (the tiny model); the adapters are built into a temporary folder with PEFT
(`uip.artifacts.llm_tiny_lora.build_bench`, dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from uip.bench.llm_inprocess import run
from uip.core.paths import artifacts_root


def main(argv: list[str] | None = None) -> dict:
    from uip import artifacts
    from uip.artifacts.llm_tiny_lora import build_bench
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="base/LoRA round pairs (median)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    artifacts.ensure(["llm-tiny"])
    model_dir = artifacts_root() / "llm-tiny"
    with tempfile.TemporaryDirectory(prefix="uip-lora-bench-") as tmp:
        names = build_bench(Path(tmp), model_dir, args.adapters, args.rank)
        engine = PagedEngine(model_dir, PagedEngineConfig(
            num_blocks=256, page_size=16, max_batch_tokens=512, torch_threads=args.torch_threads,
            max_requests_per_batch=args.streams, lora_dir=tmp, lora_max_rank=args.rank,
            lora_max_adapters=args.adapters))
        try:
            kw = dict(prompt_tokens=args.prompt_tokens, max_new_tokens=args.max_new_tokens,
                      requests_per_client=1, vocab=engine.vocab_size)
            run(engine, args.streams, **{**kw, "max_new_tokens": 4}, adapters=names)  # warm-up
            rounds = []
            for i in range(args.rounds):
                row = {"round": i}
                for label, adapters in (("base", None), ("lora", names)):
                    cpu = time.process_time()
                    r = run(engine, args.streams, seed=i, adapters=adapters, **kw)
                    cpu = time.process_time() - cpu
                    row[f"{label}_tok_s"] = r.output_tokens_per_s
                    row[f"{label}_tok_per_cpu_s"] = round(r.output_tokens / cpu, 1)
                rounds.append(row)
                print(json.dumps(row), flush=True)
        finally:
            engine.shutdown()
    out = {"streams": args.streams, "adapters": args.adapters, "rank": args.rank}
    for key in ("tok_s", "tok_per_cpu_s"):
        base = statistics.median(r[f"base_{key}"] for r in rounds)
        lora = statistics.median(r[f"lora_{key}"] for r in rounds)
        out[f"base_{key}"], out[f"lora_{key}"] = base, lora
        out[f"ratio_{key}"] = round(lora / base, 3)
    print(json.dumps(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
