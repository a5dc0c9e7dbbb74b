"""GPU machine: our PagedEngine (CUDA-graph decode) on a Llama-3-shaped bf16 model with seeded
random weights, in one process: kernel check, greedy check against transformers `generate`,
in-process benchmark, graph-replay timings and a profiler summary of one decode step.

    PYTHONPATH=python_backends python benchmarks/gpu/llm_engine_gpu.py DEST [--shape llama3-8b]
        [--deadline EPOCH]

Builds the model on the GPU (seed 0, no EOS id: every request runs to max_new_tokens), keeps
transformers' greedy tokens and top-2 logit margins for 8 prompts, saves it to DEST (for
llm_anchor.py afterwards) and frees it; then loads DEST into PagedEngine. Results: $OUT/engine.json
and $OUT/profile.txt; a markdown table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from gpu_timing import cuda_ms  # benchmarks/gpu, this script's folder

OUT = Path(os.environ.get("OUT", "."))
DEV = os.environ.get("ENGINE_DEVICE", "cuda")  # cpu: a smoke test of this script only
T0 = time.time()
SHAPES = {  # as benchmarks/gpu/prepare_llm.py
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0),
    "llama3-8b-4l": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                 max_position_embeddings=2048),
}
PROMPT, NEW, CHECK_PROMPTS, CHECK_TOKENS = 128, 128, 8, 32
RES: dict = {}


def say(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save_res() -> None:
    (OUT / "engine.json").write_text(json.dumps(RES, indent=1, default=str))


def section(name: str):
    def wrap(fn):
        def run(*a, **kw):
            t = time.time()
            try:
                out = fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - reported, the next section runs
                traceback.print_exc()
                RES.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
                out = None
            RES.setdefault("section_s", {})[name] = round(time.time() - t, 1)
            say(f"{name}: {time.time() - t:.1f} s")
            save_res()
            return out
        return run
    return wrap


def copy_bandwidth() -> float:
    a = torch.empty(1 << 31, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = []
    for i in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        if i >= 3:
            ms.append(s.elapsed_time(e))
    del a, b
    torch.cuda.empty_cache()
    return 2 * (4 << 30) / (statistics.median(ms) / 1e3) / 1e12


@section("build_and_reference")
def build_and_reference(shape: str, dest: Path, prompts: list[list[int]],
                        dtype: torch.dtype = torch.bfloat16, key: str = "reference") -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         torch_dtype=str(dtype).removeprefix("torch."))
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(DEV):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=None,
                                               bos_token_id=None)
    say("built", sum(p.numel() for p in model.parameters()) / 1e9, "B params")
    ref = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=DEV)
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=CHECK_TOKENS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
            logits = torch.stack(out.logits)[:, 0].float()  # [steps, vocab]
            top = logits.topk(2, dim=-1)
            ref.append({"tokens": out.sequences[0, len(p):].tolist(),
                        "top2": top.indices.tolist(),
                        "margin": (top.values[:, 0] - top.values[:, 1]).tolist()})
    RES[key] = ref
    t = time.time()
    model.save_pretrained(dest, max_shard_size="5GB")
    RES[f"save_s_{key}"] = round(time.time() - t, 1)
    say(f"saved to {dest} in {time.time() - t:.1f} s")
    del model
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


@section("kernel_check")
def kernel_check(shape: str) -> None:
    from uip.llm import triton_paged_attention as tpa

    s = SHAPES[shape]
    heads, kvh = s["num_attention_heads"], s["num_key_value_heads"]
    dim = s["hidden_size"] // heads
    g = torch.Generator().manual_seed(0)
    nb, page, b = 512, 64, 64
    kc = torch.randn(nb, page, kvh, dim, generator=g).bfloat16().cuda()
    vc = torch.randn(nb, page, kvh, dim, generator=g).bfloat16().cuda()
    q = torch.randn(b, heads, dim, generator=g).bfloat16().cuda()
    lens = torch.randint(1, 257, (b,), generator=g)
    lens[0], lens[1] = 1, 256
    tables = torch.randint(0, nb, (b, 32), generator=g)
    ref = tpa.reference_paged_decode(q.float(), kc.float(), vc.float(), tables.cuda(),
                                     lens.cuda())
    got = tpa.paged_decode(q, kc, vc, tables.cuda(), lens.cuda())
    err = (got.float() - ref).abs().max().item()
    RES["kernel_max_abs_err_bf16"] = err
    say(f"kernel vs reference: max abs err {err:.4f}")
    assert err < 3e-2, err
    for name, fn in (("triton", lambda: tpa.paged_decode(q, kc, vc, tables.cuda(), lens.cuda())),
                     ("gather_sdpa", lambda: tpa.reference_paged_decode(
                         q, kc, vc, tables[:, :4].cuda(), lens.cuda()))):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(50):
            fn()
        en.record()
        en.synchronize()
        RES[f"attn_us_b64_ctx_le256_{name}"] = round(st.elapsed_time(en) / 50 * 1000, 1)
    say("attention one layer, b=64:", RES["attn_us_b64_ctx_le256_triton"], "us triton,",
        RES["attn_us_b64_ctx_le256_gather_sdpa"], "us gather+sdpa")
    for sp in (2, 4, 16):  # split-K (flash-decoding) against the same reference
        got = tpa.paged_decode(q, kc, vc, tables.cuda(), lens.cuda(), splits=sp)
        RES[f"kernel_max_abs_err_bf16_splits{sp}"] = e = (got.float() - ref).abs().max().item()
        assert e < 3e-2, (sp, e)
    # batch 1 at context 192 (the batch-1 benchmark's mean context): splits 1 vs the default
    t1, l1 = tables[:1].cuda(), torch.tensor([192]).cuda()
    for sp in (1, tpa.num_splits(1, kvh, 32 * page, 64)):
        RES[f"attn_us_b1_ctx192_splits{sp}"] = _time_us(
            lambda sp=sp: tpa.paged_decode(q[:1], kc, vc, t1, l1, splits=sp))
    # fused RoPE + K/V write against rope_qkv + index_copy_
    T = 64
    qkv = torch.randn(T, (heads + 2 * kvh) * dim, generator=g).bfloat16().cuda()
    freqs = torch.arange(2048.0)[:, None] * (1.0 / 500000 ** (torch.arange(0, dim, 2) / dim))
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().bfloat16().cuda(), emb.sin().bfloat16().cuda()
    pos = torch.randint(0, 2048, (T,), generator=g).cuda()
    slots = torch.randperm(nb * page, generator=g)[:T].cuda()
    k2, v2 = kc.clone(), vc.clone()
    k1f, v1f = kc.float(), vc.float()
    qr = tpa.reference_rope_write_kv(qkv.float(), cos.float(), sin.float(), pos, slots,
                                     k1f, v1f)
    qg = tpa.rope_write_kv(qkv, cos, sin, pos, slots, k2, v2)
    RES["rope_kv_max_abs_err_bf16"] = e = max((qg.float() - qr).abs().max().item(),
                                              (k2.float() - k1f).abs().max().item(),
                                              (v2.float() - v1f).abs().max().item())
    say(f"rope+kv kernel vs reference: max abs err {e:.4f}; attention b=1:",
        {k: v for k, v in RES.items() if k.startswith("attn_us_b1")})
    assert e < 6e-2, e


def _time_us(fn, n: int = 100) -> float:
    return round(cuda_ms(fn, n, warm=5) * 1000, 1)


def collect(engine, rid: int) -> list[int]:
    tokens: list[int] = []
    while True:
        rs = engine.await_responses(rid, timeout=60)
        if not rs:
            raise TimeoutError(f"request {rid}: nothing in 60 s")
        for r in rs:
            if r.error:
                raise RuntimeError(r.error)
            tokens += r.tokens
        if rs[-1].is_final:
            return tokens


def greedy(engine, prompts: list[list[int]]) -> list[list[int]]:
    from uip.llm.engine import GenerationRequest

    rids = [engine.enqueue(GenerationRequest(input_ids=p, max_new_tokens=CHECK_TOKENS))
            for p in prompts]
    return [collect(engine, r) for r in rids]


def compare(ours: list[list[int]], ref: list[dict]) -> list[dict]:
    out = []
    for i, (got, r) in enumerate(zip(ours, ref, strict=True)):
        pairs = zip(got, r["tokens"], strict=False)
        div = next((j for j, (a, b) in enumerate(pairs) if a != b), None)
        row = {"prompt": i, "equal": got == r["tokens"], "first_divergence": div}
        if div is not None:
            row.update(ours=got[div], hf=r["tokens"][div], hf_top2=r["top2"][div],
                       hf_top2_margin=r["margin"][div], ours_is_hf_second=got[div]
                       == r["top2"][div][1])
        out.append(row)
    return out


@section("engine")
def engine_part(dest: Path, prompts: list[list[int]], deadline: float) -> None:
    from uip.bench.llm_inprocess import run, run_one_consumer
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    t = time.time()
    cfg = PagedEngineConfig(num_blocks=1024, page_size=64, max_batch_tokens=8192,
                            max_requests_per_batch=64, max_context=2048, dtype="bfloat16",
                            device=DEV)
    RES["engine_config"] = cfg.__dict__
    engine = PagedEngine(dest, cfg)
    RES["engine_start_s"] = round(time.time() - t, 1)
    g = engine.graphs
    RES["graphs"] = None if g is None else {"buckets": g.buckets, "capture_s": g.capture_s,
                                            "capture_MiB": g.capture_bytes / 2**20}
    RES["weight_bytes"] = sum(x.numel() * x.element_size() for ly in engine.runner.layers
                              for x in vars(ly).values() if x is not None) + sum(
        x.numel() * x.element_size() for x in (engine.runner.lm_head, engine.runner.norm))
    say("engine up", RES["engine_start_s"], "s; graphs", RES["graphs"])
    try:
        ref = RES.get("reference")
        if ref:
            RES["greedy_graphs"] = compare(greedy(engine, prompts), ref)
            say("greedy graphs:", [r["first_divergence"] for r in RES["greedy_graphs"]])
            save_res()
        bench = RES.setdefault("bench", [])
        # one consumer thread (await_any, as Triton's llm_engine dispatcher); 64 also with a
        # thread per client (the earlier measurements' driver)
        for c, driver in ((1, run_one_consumer), (8, run_one_consumer),
                          (64, run_one_consumer), (64, run)):
            driver(engine, c, PROMPT, 8, 1, vocab=engine.vocab_size, seed=1)  # warm-up
            before, steps = dict(engine.step_seconds), engine._steps
            r = driver(engine, c, PROMPT, NEW, 2, vocab=engine.vocab_size)
            n = engine._steps - steps
            phases = {k: round((v - before[k]) / n * 1000, 3) for k, v in
                      engine.step_seconds.items()}
            bench.append({"mode": "graphs+compile" if g else "eager", "steps": n,
                          "driver": "one consumer" if driver is run_one_consumer
                          else "thread per client", "host_ms_per_step": phases, **vars(r)})
            say(bench[-1])
            save_res()
        if g is not None:
            replay_and_profile(engine)
    finally:
        engine.shutdown()
        del engine
        gc.collect()
        if DEV == "cuda":
            torch.cuda.empty_cache()


@section("fp32_check")
def fp32_check(dest: Path, prompts: list[list[int]]) -> None:
    from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

    engine = PagedEngine(dest, PagedEngineConfig(
        num_blocks=64, page_size=64, max_batch_tokens=2048, max_requests_per_batch=8,
        max_context=2048, dtype="float32", device=DEV))
    try:
        RES["greedy_fp32_graphs"] = compare(greedy(engine, prompts), RES["ref_fp32"])
        say("fp32 greedy:", [r["first_divergence"] for r in RES["greedy_fp32_graphs"]])
    finally:
        engine.shutdown()
        del engine
        gc.collect()
        if DEV == "cuda":
            torch.cuda.empty_cache()


def _fill(g, b: int, ctx: int) -> list:
    """A decode step of b rows at context `ctx` reading blocks 0.. and writing only to the
    scratch block (the engine is idle)."""
    scratch = int(g._pad[4])
    blocks = -(-ctx // g.block_size)
    return [[0] * b, [ctx - 1] * b, [scratch * g.block_size] * b,
            [list(range(i * blocks, (i + 1) * blocks)) for i in range(b)], [ctx] * b]


def replay_and_profile(engine) -> None:
    from torch.profiler import ProfilerActivity, profile

    g = engine.graphs
    rows = RES.setdefault("replay", [])
    with torch.inference_mode():
        for b in (1, 8, 64):
            args = _fill(g, b, PROMPT + NEW // 2)
            for _ in range(3):
                g.run(*args)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(30):
                g.run(*args)
                g._logits[g.bucket(b)][:b].argmax(-1).tolist()  # the engine's one sync
            host_ms = (time.perf_counter() - t) / 30 * 1000
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            for _ in range(30):
                g._graphs[g.bucket(b)].replay()
            en.record()
            en.synchronize()
            rows.append({"batch": b, "context": PROMPT + NEW // 2,
                         "replay_ms": st.elapsed_time(en) / 30, "run_and_sync_ms": host_ms})
            say(rows[-1])
        text = []
        for mode, b in (("graph", 1), ("graph", 64), ("eager_static", 64)):
            args = _fill(g, b, PROMPT + NEW // 2)
            g.run(*args)  # the static buffer now holds this step (writes: scratch block only)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    if mode == "graph":
                        g.run(*args)
                    else:  # the same kernels launched one by one (names and launch cost)
                        g._forward(g.bucket(b))
                    g._logits[g.bucket(b)][:b].argmax(-1).tolist()
                torch.cuda.synchronize()
            ka = prof.key_averages()
            text.append(f"== {mode}, batch {b}, context {PROMPT + NEW // 2}, 5 steps ==")
            text.append(ka.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
            cats: dict[str, float] = {}
            for e in ka:
                us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                if not us or e.key.startswith(("cudaGraphLaunch", "aten::", "cuda")):
                    continue
                k = e.key.lower()
                cat = ("attention (triton)" if "decode_kernel" in k or "combine_kernel" in k
                       else "rope + kv write (triton)" if "rope_kv_kernel" in k else
                       "fused elementwise (torch.compile)" if k.startswith("triton_") else
                       "gemm" if any(x in k for x in ("gemm", "gemv", "nvjet", "cutlass",
                                                      "sm90", "cublas", "splitk")) else
                       "kv write (index_copy)" if "index" in k else
                       "other (norm, rope, silu, add, copies)")
                cats[cat] = cats.get(cat, 0.0) + us / 5 / 1000
            RES.setdefault("profile_ms_per_step", {})[f"{mode}_{b}"] = cats
            say(f"profile {mode} b={b}:", {k: round(v, 3) for k, v in cats.items()})
        (OUT / "profile.txt").write_text("\n".join(text))


def table() -> None:
    bw = RES.get("copy_TBps")
    wb = RES.get("weight_bytes")
    floor = wb / (bw * 1e12) * 1e3 if bw and wb else None
    print("\n| mode | driver | streams | output tok/s | ITL mean ms | TTFT p50 ms | vs HBM floor |")
    print("|---|---|---|---|---|---|---|")
    for r in RES.get("bench", []):
        share = (f"{floor / r['itl_mean_ms']:.2f}" if floor and r["concurrency"] == 1 else "")
        print(f"| {r['mode']} | {r.get('driver', '')} | {r['concurrency']} | "
              f"{r['output_tokens_per_s']:,.0f} | "
              f"{r['itl_mean_ms']} | {r['ttft_p50_ms']} | {share} |")
    if floor:
        print(f"\ncopy {bw:.2f} TB/s; weights read per step {wb / 1e9:.2f} GB -> floor "
              f"{floor:.2f} ms/token ({1000 / floor:.0f} tok/s at batch 1)")
    for r in RES.get("replay", []):
        print(f"graph replay b={r['batch']}: {r['replay_ms']:.2f} ms GPU, "
              f"{r['run_and_sync_ms']:.2f} ms with host fill + sync")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dest", type=Path)
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--deadline", type=float, default=T0 + 600)
    p.add_argument("--fp32-dest", type=Path, default=None,
                   help="also: a 4-layer 8B-wide fp32 model here, greedy vs generate")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    OUT.mkdir(parents=True, exist_ok=True)
    on_gpu = DEV == "cuda"
    RES.update(gpu=torch.cuda.get_device_name(0) if on_gpu else DEV, torch=torch.__version__,
               shape=a.shape)
    RES["copy_TBps"] = copy_bandwidth() if on_gpu else None
    say(f"copy {RES['copy_TBps']} TB/s")
    rng = random.Random(0)
    vocab = SHAPES[a.shape]["vocab_size"]
    prompts = [[rng.randrange(10, vocab) for _ in range(32)] for _ in range(CHECK_PROMPTS)]
    if on_gpu:
        kernel_check(a.shape)
    build_and_reference(a.shape, a.dest, prompts)
    if (a.dest / "config.json").exists():
        engine_part(a.dest, prompts, a.deadline)
    if a.fp32_dest and time.time() < a.deadline - 200:
        build_and_reference("llama3-8b-4l", a.fp32_dest, prompts, torch.float32, "ref_fp32")
        fp32_check(a.fp32_dest, prompts)
    save_res()
    table()


if __name__ == "__main__":
    main()
