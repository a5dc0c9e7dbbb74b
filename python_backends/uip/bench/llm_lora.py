"""In-process benchmark of mixed-adapter LoRA batches in the torch `llm_engine` runtime: the
same engine serves `--streams` streams on the base model and the same number spread over
`--adapters` LoRA adapters (rank `--rank` on every projection), alternating rounds, and reports
output tokens/s of each and their ratio (the target is >= 0.8): per wall-clock second, and per
CPU second of this process (`time.process_time`, all threads), which a machine shared with
other work disturbs far less than the wall clock. `--forward-iters N` adds a forward-pass
microbenchmark: one decode step of `--streams` rows (context `--forward-context`), base vs
every row on an adapter, N steps each, the best of 5 alternating runs (eager `runner.forward`,
and on the GPU the CUDA-graph replay too, checked against eager), in the engine's LoRA form and
each other dense form (`lora.DENSE_FORMS`: on the GPU "triton" is the engine's, "torch" and
"unfused" are the earlier ones, each in a graph of its own), with (GPU) the kernels per step;
and one eager prefill step of `--prefill-rows` rows (prompts of `--prompt-tokens`, one adapter
each), base vs the grouped and the dense LoRA form.

    .venv/bin/python -m uip.bench.llm_lora [--streams 32] [--adapters 8] [--rank 8]
        [--rounds 3] [--max-new-tokens 64] [--torch-threads 2] [--forward-iters 0] [--json OUT]
    # GPU, an 8B-shaped bf16 folder (benchmarks/gpu/prepare_llm.py):
    python -m uip.bench.llm_lora --model-dir /dev/shm/llm-8b --device cuda --dtype bfloat16 \\
        --rank 16 --num-blocks 4096 --forward-iters 50

The model is llm-tiny by default (CPU); the adapters are built into a temporary folder with
PEFT on `--device` (`uip.artifacts.llm_tiny_lora.build_bench`, dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from uip.bench.llm_inprocess import run
from uip.core.paths import artifacts_root


def _clock(device: torch.device):
    """Seconds of this process's CPU (CPU) or of the wall clock after a sync (GPU)."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.process_time


def cuda_kernels(fn, device: torch.device) -> int | None:
    """Kernels (and copies) one call of `fn` launches on the GPU (torch.profiler); None on
    CPU or when the profiler cannot trace."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:  # noqa: BLE001 - a measurement aid, never the benchmark's failure
        return None


def _best_ms(variants: dict, clock, iters: int, repeats: int) -> dict[str, float]:
    """ms per call of each variant: the best of `repeats` alternating runs of `iters` calls
    (the best: load spikes), after 3 calls of warm-up each."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for label, fn in variants.items():
            for _ in range(3):
                fn()
            t = clock()
            for _ in range(iters):
                fn()
            best[label] = min(best[label], (clock() - t) / iters * 1e3)
    return best


def prefill_bench(engine, names: list[str], rows: int, prompt: int, iters: int,
                  repeats: int = 5) -> dict:
    """One eager prefill step of `rows` rows (prompts of `prompt` tokens, each on one adapter
    of `names` in turn): ms of the base, the grouped form and the dense one (the engine's
    DENSE_MAX_ROWS picks one of those two by the step's rows)."""
    from uip.llm.lora import grouped_step
    from uip.llm.paged_attention import build_meta, to_device

    runner, lora = engine.runner, engine.lora
    dev, bs = runner.device, engine.block_size
    seqs = max(1, rows // prompt)
    held = [lora.acquire(n, lora.read(n)) for n in names]
    try:
        per = -(-prompt // bs)
        tables = [[(i * per + j) % engine.blocks.num_blocks for j in range(per)]
                  for i in range(seqs)]
        rng = random.Random(1)
        ids = to_device([rng.randrange(8, engine.vocab_size) for _ in range(seqs * prompt)], dev)
        positions = to_device(list(range(prompt)) * seqs, dev)
        slots = [t[p // bs] * bs + p % bs for t in tables for p in range(prompt)]
        prefills = [(i * prompt, prompt, prompt, t) for i, t in enumerate(tables)]
        out_rows = to_device([(i + 1) * prompt - 1 for i in range(seqs)], dev)
        row_slots = [held[i % len(held)] for i in range(seqs) for _ in range(prompt)]

        def step(lora_step):
            meta = build_meta(slots, [], [], prefills, bs, dev)
            return runner.forward(ids, positions, meta, engine.cache, out_rows, lora_step())

        variants = {
            "base": lambda: step(lambda: None),
            "grouped": lambda: step(lambda: grouped_step(row_slots, lora.max_adapters, dev)),
            "dense": lambda: step(lambda: lora.dense(to_device(row_slots, dev)))}
        out: dict = {"rows": seqs * prompt, "prompt": prompt, "iters": iters}
        with torch.inference_mode():
            want = variants["grouped"]()
            got = variants["dense"]()
            out["dense_max_abs_diff_grouped"] = round((got - want).abs().max().item(), 4)
            best = _best_ms(variants, _clock(dev), iters, repeats)
        for label, ms in best.items():
            out[f"{label}_ms"] = round(ms, 3)
        for label in ("grouped", "dense"):
            out[f"{label}_ratio"] = round(best["base"] / best[label], 3)
        return out
    finally:
        for slot in held:
            lora.release(slot)


def forward_bench(engine, names: list[str], rows: int, context: int, iters: int,
                  repeats: int = 5) -> dict:
    """One decode step of `rows` rows, base vs rows spread over `names`: ms per step (the
    best of `repeats` alternating runs of `iters` steps), eager and (GPU) graph replay, in
    the engine's LoRA form ("lora") and each other dense form of lora.DENSE_FORMS (GPU: an
    extra graph of that form, one bucket), and (GPU) the kernels of one eager step of each."""
    from uip.llm.cuda_graphs import DecodeGraphs
    from uip.llm.lora import DENSE_FORMS
    from uip.llm.paged_attention import build_meta, to_device

    runner, lora = engine.runner, engine.lora
    dev, bs = runner.device, engine.block_size
    held = [lora.acquire(n, lora.read(n)) for n in names]
    try:
        per = -(-context // bs)
        tables = [[(i * per + j) % engine.blocks.num_blocks for j in range(per)]
                  for i in range(rows)]
        rng = random.Random(0)
        ids = [rng.randrange(8, engine.vocab_size) for _ in range(rows)]
        positions, lens = [context - 1] * rows, [context] * rows
        slots = [t[(context - 1) // bs] * bs + (context - 1) % bs for t in tables]
        mixed = [held[i % len(held)] for i in range(rows)]
        out_rows = to_device(list(range(rows)), dev)
        forms = [f for f in DENSE_FORMS if f != "triton" or lora.form == "triton"]

        def eager(row_slots: list[int], form: str | None = None) -> torch.Tensor:
            meta = build_meta(slots, tables, lens, [], bs, dev)
            step = (lora.step(row_slots) if form is None
                    else lora.dense(to_device(row_slots, dev), form))
            return runner.forward(to_device(ids, dev), to_device(positions, dev), meta,
                                  engine.cache, out_rows, step)

        # label -> (path, fn(row slots)); "base" and "lora" are the engine's own
        variants = {"eager_base": lambda: eager([0] * rows), "eager_lora": lambda: eager(mixed)}
        variants.update({f"eager_{f}": (lambda f=f: eager(mixed, f)) for f in forms})
        graphs = engine.graphs
        if graphs is not None:
            def replay(g: DecodeGraphs, row_slots: list[int]):
                return lambda: g.run(ids, positions, slots, tables, lens, lora_slots=row_slots)

            variants["graph_base"] = replay(graphs, [0] * rows)
            variants["graph_lora"] = replay(graphs, mixed)
            for form in forms:
                if form != lora.form:
                    g = DecodeGraphs(runner, engine.cache, graphs.block_size,
                                     graphs.scratch_block, graphs.max_blocks,
                                     [graphs.bucket(rows)], kernel=graphs.kernel,
                                     rope_kv=graphs.rope_kv, lora_form=form)
                    g.variants = (True,)
                    with torch.inference_mode():
                        g.capture()
                    variants[f"graph_{form}"] = replay(g, mixed)
        clock, out = _clock(dev), {"rows": rows, "context": context, "iters": iters,
                                   "lora_form": lora.form}
        with torch.inference_mode():
            # the check: every variant's adapter logits agree with eager's, and differ from base
            want, base = eager(mixed).clone(), eager([0] * rows).clone()
            out["lora_changes_argmax"] = round(
                (want.argmax(-1) != base.argmax(-1)).float().mean().item(), 3)
            for label, fn in variants.items():
                if label.endswith("_base") or label == "eager_lora":
                    continue
                got = fn()
                out[f"{label}_argmax_equal_eager"] = round(
                    (got.argmax(-1) == want.argmax(-1)).float().mean().item(), 3)
                out[f"{label}_max_abs_diff_eager"] = round((got - want).abs().max().item(), 4)
            kernels = {label.removeprefix("eager_"): cuda_kernels(fn, dev)
                       for label, fn in variants.items() if label.startswith("eager_")}
            if kernels["base"] is not None:
                out["kernels_per_step"] = kernels
            best = _best_ms(variants, clock, iters, repeats)
            for label, ms in best.items():
                out[f"{label}_ms"] = round(ms, 3)
            for path in ("eager", "graph"):
                for label in variants:
                    if label.startswith(f"{path}_") and not label.endswith("_base"):
                        ratio = f"{path}_ratio" if label == f"{path}_lora" else f"{label}_ratio"
                        out[ratio] = round(best[f"{path}_base"] / best[label], 3)
        return out
    finally:
        for slot in held:
            lora.release(slot)


def main(argv: list[str] | None = None) -> dict:
    from uip import artifacts
    from uip.artifacts.llm_tiny_lora import build_bench
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=None, help="default: artifacts/llm-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="base/LoRA round pairs (median)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-blocks", type=int, default=256)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-batch-tokens", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--forward-iters", type=int, default=0, help="0: no forward microbenchmark")
    p.add_argument("--forward-context", type=int, default=64)
    p.add_argument("--prefill-rows", type=int, default=512,
                   help="with --forward-iters: an eager prefill step of this many rows "
                        "(prompts of --prompt-tokens), grouped vs dense form; 0: none")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    model_dir = args.model_dir
    if model_dir is None:
        artifacts.ensure(["llm-tiny"])
        model_dir = artifacts_root() / "llm-tiny"
    out: dict = {"model": model_dir.name, "device": args.device, "streams": args.streams,
                 "adapters": args.adapters, "rank": args.rank}
    with tempfile.TemporaryDirectory(prefix="uip-lora-bench-") as tmp:
        t = time.perf_counter()
        names = build_bench(Path(tmp), model_dir, args.adapters, args.rank, args.device)
        out["adapters_build_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        engine = PagedEngine(model_dir, PagedEngineConfig(
            num_blocks=args.num_blocks, page_size=args.page_size,
            max_batch_tokens=args.max_batch_tokens, torch_threads=args.torch_threads,
            device=args.device, dtype=args.dtype, cuda_graphs=not args.no_cuda_graphs,
            max_requests_per_batch=args.streams, lora_dir=tmp, lora_max_rank=args.rank,
            lora_max_adapters=args.adapters))
        out["engine_start_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(out), flush=True)
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
            if args.forward_iters:
                out["forward"] = forward_bench(engine, names, args.streams,
                                               args.forward_context, args.forward_iters)
                if args.prefill_rows:
                    out["prefill"] = prefill_bench(
                        engine, names, args.prefill_rows, min(args.prompt_tokens,
                                                              args.prefill_rows),
                        max(2, args.forward_iters // 4))
        finally:
            engine.shutdown()
    for key in ("tok_s", "tok_per_cpu_s"):
        base = statistics.median(r[f"base_{key}"] for r in rounds)
        lora = statistics.median(r[f"lora_{key}"] for r in rounds)
        out[f"base_{key}"], out[f"lora_{key}"] = base, lora
        out[f"ratio_{key}"] = round(lora / base, 3)
    out["rounds"] = rounds
    print(json.dumps(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
