"""The static-shape decode path of PagedEngine's CUDA graphs: the reference of the Triton
paged-decode kernel against the gather reference (CPU), the kernels (split-K decode, fused
RoPE + K/V write) against their references (GPU only), and the engine's decode-only steps
through `DecodeGraphs` (run eagerly on CPU, with the references as the kernels), overlapped
with the previous step's read-back, equal transformers `generate` token for token, also under
preemption, seeded sampling and cancellation; with LoRA adapters too (the graph's adapter
variant: rows' slots read on the device), equal to the PEFT-merged model's `generate`."""

from __future__ import annotations

import time

import pytest
import torch
from engine_contract import N, run, run_concurrently, tokens_of, wait_idle
from test_llm_paged_engine import CONFIG, TEXTS, generate, make

from uip.core.settings import ModelSettings
from uip.llm import triton_paged_attention as tpa
from uip.llm.cuda_graphs import DecodeGraphs, default_buckets
from uip.llm.engine import GenerationRequest, SamplingParams
from uip.llm.paged_attention import build_meta, decode_attention
from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig
from uip.llm.prefill_graphs import PrefillGraphs, prefill_buckets

LENS = [1, 15, 16, 17, 40, 64]
PAGE = 16


def _case(dtype: torch.dtype, device: str, heads: int = 8, kv_heads: int = 2, dim: int = 32):
    g = torch.Generator().manual_seed(0)
    blocks = 32
    kc = torch.randn(blocks, PAGE, kv_heads, dim, generator=g).to(dtype).to(device)
    vc = torch.randn(blocks, PAGE, kv_heads, dim, generator=g).to(dtype).to(device)
    q = torch.randn(len(LENS), heads, dim, generator=g).to(dtype).to(device)
    perm = torch.randperm(blocks, generator=g).tolist()
    tables = [[perm[(3 * i + j) % blocks] for j in range(-(-n // PAGE))]
              for i, n in enumerate(LENS)]
    width = 6  # wider than any table: the rest is garbage the kernel must not read
    padded = torch.tensor([t + [blocks - 1] * (width - len(t)) for t in tables])
    return q, kc, vc, tables, padded.to(device), torch.tensor(LENS, device=device)


def test_reference_equals_the_gather_path():
    q, kc, vc, tables, padded, lens = _case(torch.float32, "cpu")
    meta = build_meta([0] * len(LENS), tables, LENS, [], PAGE, torch.device("cpu"))
    expected = decode_attention(q, kc, vc, meta)
    torch.testing.assert_close(tpa.reference_paged_decode(q, kc, vc, padded, lens), expected)


ON_GPU = pytest.mark.skipif(not (torch.cuda.is_available() and tpa.AVAILABLE),
                            reason="the Triton kernels need a CUDA GPU")


@ON_GPU
@pytest.mark.parametrize("splits", [1, 2, 8])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(8, 2, 32), (32, 8, 128), (4, 4, 64)])
def test_triton_kernel_equals_reference(heads, kv_heads, dim, splits):
    q, kc, vc, _, padded, lens = _case(torch.bfloat16, "cuda", heads, kv_heads, dim)
    expected = tpa.reference_paged_decode(q.float(), kc.float(), vc.float(), padded, lens)
    got = tpa.paged_decode(q, kc, vc, padded.int(), lens.int(), block_n=16, splits=splits)
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


@ON_GPU
def test_fused_rope_kv_write_equals_reference():
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, tokens = 8, 2, 64, 5
    kc = torch.randn(8, PAGE, kv_heads, dim, generator=g).cuda()
    vc = torch.randn(8, PAGE, kv_heads, dim, generator=g).cuda()
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=g).cuda()
    half = torch.randn(64, dim // 2, generator=g)
    cos, sin = torch.cat([half.cos()] * 2, 1).cuda(), torch.cat([half.sin()] * 2, 1).cuda()
    positions = torch.tensor([0, 3, 9, 63, 20]).cuda()
    slots = torch.tensor([0, 17, 40, 127, 100]).cuda()
    k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    expected = tpa.reference_rope_write_kv(qkv, cos, sin, positions, slots, k1, v1)
    got = tpa.rope_write_kv(qkv, cos, sin, positions, slots, k2, v2)
    for a, b in ((got, expected), (k2, k1), (v2, v1)):
        torch.testing.assert_close(a, b)


def test_num_splits_fill_the_gpu_at_small_batch():
    assert tpa.num_splits(1, 8, 2048, 64) == 16
    assert tpa.num_splits(8, 8, 2048, 64) == 4
    assert tpa.num_splits(64, 8, 2048, 64) == 1
    assert tpa.num_splits(1, 8, 64, 64) == 1  # one tile of context: nothing to split


def test_default_buckets():
    assert default_buckets(1) == [1]
    assert default_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert default_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]
    assert default_buckets(200) == [1, 2, 4, 8, 16, 32, 64, 128, 192, 200]


def test_cuda_graphs_spec_parameter():
    config = {"name": "llm_engine", "max_batch_size": 8, "parameters": {
        k: {"string_value": v} for k, v in {
            "runtime": "torch", "artifact": "llm-tiny", "cuda_graphs": "false"}.items()}}
    assert PagedEngineConfig.from_settings(ModelSettings.from_config(config)).cuda_graphs is False
    assert PagedEngineConfig().cuda_graphs is True


@pytest.fixture(scope="module")
def prompts(llm_tiny_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_tiny_dir)
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def reference(llm_tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_tiny_dir, attn_implementation="sdpa").eval()


def _static_graphs(engine: PagedEngine) -> tuple[list[int], list[int]]:
    """Give an idle engine `DecodeGraphs` run eagerly (buckets 1, 2, 4, 8, reference kernels);
    returns the rows of every graph step and of those launched before the previous step's
    tokens were read back (token ids taken from that step's output on the device)."""
    scratch = engine.blocks.num_blocks
    engine.cache = engine.runner.allocate_cache(scratch + 1, engine.block_size)
    graphs = DecodeGraphs(engine.runner, engine.cache, engine.block_size, scratch,
                          -(-engine.max_context // engine.block_size), [1, 2, 4, 8],
                          kernel=tpa.reference_paged_decode)
    calls: list[int] = []
    overlapped: list[int] = []
    with_lora: list[int] = []  # graph steps with adapter rows
    mixed: list[int] = []  # overlapped steps with rows whose ids come from the host
    run_graph = graphs.run

    def spy(ids, *a, prev=None, lora_slots=None):
        calls.append(len(ids))
        if prev is not None:
            overlapped.append(len(ids))
            if -1 in prev[1]:
                mixed.append(len(ids))
        if lora_slots and any(lora_slots):
            with_lora.append(len(ids))
        return run_graph(ids, *a, prev=prev, lora_slots=lora_slots)

    graphs.run = spy  # type: ignore[method-assign]
    engine.graphs = graphs
    graphs.with_lora = with_lora  # type: ignore[attr-defined]
    graphs.mixed = mixed  # type: ignore[attr-defined]
    return calls, overlapped


def test_static_decode_path_equals_generate(llm_tiny_dir, reference, prompts):
    """Decode-only steps of 1..8 rows padded to buckets 1, 2, 4, 8 (the CUDA-graph inputs,
    eager on CPU); padding writes to a scratch block no sequence owns."""
    engine = PagedEngine(llm_tiny_dir, PagedEngineConfig(**CONFIG.__dict__))
    try:
        calls, overlapped = _static_graphs(engine)
        # different lengths: sequences finish while the next step is already launched
        lengths = [N - 3 * (i % 3) for i in range(7)]
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=n)
                for p, n in zip(prompts[:7], lengths, strict=True)]
        for i, results in enumerate(run_concurrently(engine, reqs)):
            assert tokens_of(results) == generate(reference, prompts[i], N)[:lengths[i]], \
                f"prompt {i}"
        assert calls and max(calls) == 7  # padded to the bucket of 8
        # steps launched before the previous step's tokens were read back (token ids taken
        # from that step's output on the device), after some sequences finished too
        assert overlapped and min(overlapped) < 7
    finally:
        engine.shutdown()


def test_overlap_under_preemption_sampling_and_cancel(llm_tiny_dir, reference, prompts):
    # 14 blocks of 8 tokens: 8 requests need ~ 8 x 4 blocks, so sequences are preempted (with
    # a placeholder token pending) and recomputed
    engine = make(llm_tiny_dir, num_blocks=14, page_size=8, max_batch_tokens=64)
    try:
        _, overlapped = _static_graphs(engine)
        sp = SamplingParams(temperature=0.9, top_k=40, seed=7)
        alone = tokens_of(run(engine, prompts[3], sampling=sp))
        assert overlapped  # a lone request's decode steps follow each other on the device
        reqs = [GenerationRequest(input_ids=p, max_new_tokens=N) for p in prompts]
        reqs.append(GenerationRequest(input_ids=prompts[3], max_new_tokens=N, sampling=sp))
        results = run_concurrently(engine, reqs)
        for i in range(8):
            assert tokens_of(results[i]) == generate(reference, prompts[i], N), f"prompt {i}"
        assert tokens_of(results[8]) == alone
        assert wait_idle(engine).preemptions > 0
        # cancelled while a step is in flight: the non-streaming final result holds the
        # tokens read back so far, never a placeholder
        rid = engine.enqueue(GenerationRequest(input_ids=prompts[1], max_new_tokens=64,
                                               streaming=False))
        while engine.stats().tokens_generated < 9 * N + len(alone) + 5:
            time.sleep(0.002)
        engine.cancel(rid)
        final = engine.await_responses(rid, timeout=10)[-1]
        assert final.finish_reason == "cancelled" and len(final.tokens) >= 5
        assert final.tokens == generate(reference, prompts[1], 64)[:len(final.tokens)]
        assert wait_idle(engine).kv_blocks_used == 0
    finally:
        engine.shutdown()


def test_prompts_join_overlapped_steps(llm_tiny_dir, reference, prompts):
    """Under a token budget of about the running rows plus a prompt, with requests waiting and
    arriving while others decode, steps whose new prompts' chunks run as rows beside the
    decodes are launched before the previous step's tokens are read back (the decode rows'
    ids taken on the device, the prompts' from the host); every request equals generate."""
    engine = make(llm_tiny_dir, max_batch_tokens=8, max_requests_per_batch=4)
    try:
        _static_graphs(engine)  # decode graphs of up to 8 rows
        lengths = [N + 4 - 2 * (i % 4) for i in range(len(prompts))]
        reqs = [GenerationRequest(input_ids=p[:6], max_new_tokens=n)
                for p, n in zip(prompts, lengths, strict=True)]
        for i, results in enumerate(run_concurrently(engine, reqs)):
            assert tokens_of(results) == generate(reference, prompts[i][:6], lengths[i]), \
                f"prompt {i}"
        assert engine.graphs.mixed, "no prompt joined an overlapped step"
        assert wait_idle(engine).kv_blocks_used == 0
    finally:
        engine.shutdown()


def test_prefill_buckets():
    assert prefill_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert prefill_buckets(100) == [16, 32, 64, 100]
    assert prefill_buckets(8) == []


def test_static_prefill_path_equals_generate(llm_tiny_dir, reference, prompts):
    """A lone prompt's first chunk padded to buckets 16, 32 (the prefill CUDA-graph inputs,
    eager on CPU); steps with a cached prefix, with decode rows or longer chunks run as before."""
    engine = PagedEngine(llm_tiny_dir, PagedEngineConfig(**CONFIG.__dict__))
    try:
        scratch = engine.blocks.num_blocks
        engine.cache = engine.runner.allocate_cache(scratch + 1, engine.block_size)
        graphs = PrefillGraphs(engine.runner, engine.cache, scratch * engine.block_size, [16, 32])
        calls: list[int] = []
        real_run = graphs.run

        def spy(ids, slots):
            calls.append(len(ids))
            return real_run(ids, slots)

        graphs.run = spy  # type: ignore[method-assign]
        engine.prefill_graphs = graphs
        for p in prompts[:4]:  # one at a time: each prompt's prefill is alone in its step
            assert tokens_of(run(engine, p)) == generate(reference, p, N)
        assert sorted(calls) == sorted(len(p) for p in prompts[:4] if len(p) <= 32)
        assert any(n not in (16, 32) for n in calls)  # padded
        calls.clear()
        results = run_concurrently(engine, [GenerationRequest(input_ids=p, max_new_tokens=N)
                                            for p in prompts])
        for i, r in enumerate(results):
            assert tokens_of(r) == generate(reference, prompts[i], N), f"prompt {i}"
        assert wait_idle(engine).kv_blocks_used == 0
    finally:
        engine.shutdown()


def test_prefill_beside_running_decodes(llm_tiny_dir, reference, prompts):
    """Prompts joining a running decode: when all the step's tokens fit a decode graph, each
    token is a row of it; else the decode rows replay their graph and the new chunks run on
    their own (a lone prompt through its prefill graph, a longer one eagerly). Paths counted
    in the stats; every request equals generate."""
    from engine_contract import collect

    engine = PagedEngine(llm_tiny_dir, PagedEngineConfig(**CONFIG.__dict__))
    try:
        _static_graphs(engine)  # decode graphs of up to 8 rows
        engine.prefill_graphs = PrefillGraphs(engine.runner, engine.cache,
                                              engine.blocks.num_blocks * engine.block_size,
                                              [16, 32])
        by_len = sorted(range(1, len(prompts)), key=lambda i: len(prompts[i]))
        short, mid = prompts[by_len[0]], prompts[by_len[-1]]
        long = [t for p in prompts[1:] for t in p]
        assert len(short) < 7 and 8 < len(mid) <= 32 and len(long) > 32
        long_n = 64  # the first request keeps decoding while the others join

        def after(count: int) -> None:
            deadline = time.monotonic() + 30
            while engine.stats().tokens_generated < count:
                assert time.monotonic() < deadline
                time.sleep(0.001)

        first = engine.enqueue(GenerationRequest(input_ids=prompts[0], max_new_tokens=long_n))
        joined = []
        for p, count in ((short, 2), (mid, N + 4), (long, 2 * N + 6)):
            after(count)  # the previous one ran beside the decode by now
            joined.append((p, engine.enqueue(GenerationRequest(input_ids=p,
                                                                 max_new_tokens=N))))
        assert tokens_of(collect(engine, first)) == generate(reference, prompts[0], long_n)
        for p, rid in joined:
            assert tokens_of(collect(engine, rid)) == generate(reference, p, N), p
        paths = wait_idle(engine).steps_by_path
        for path in ("graph_prefill", "graph_mixed", "split_graph_prefill", "split_eager"):
            assert paths.get(path, 0) >= 1, paths
        assert paths.get("graph_decode", 0) > 0 and "eager" not in paths, paths
    finally:
        engine.shutdown()


def test_decode_graphs_take_adapter_rows(llm_tiny_dir, llm_tiny_lora_dir, prompts):
    """A batch mixing adapters alpha, beta and the base model through DecodeGraphs (eager on
    CPU): decode steps with adapter rows replay the adapter variant, overlapped too, and each
    request gets the PEFT-merged model's greedy tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = PagedEngine(llm_tiny_dir, PagedEngineConfig(
        **{**CONFIG.__dict__, "lora_dir": str(llm_tiny_lora_dir), "lora_max_rank": 8,
           "lora_max_adapters": 2}))
    try:
        _, overlapped = _static_graphs(engine)
        plan = [(p, a) for p in prompts[:2] for a in (None, "alpha", "beta")]
        results = run_concurrently(engine, [
            GenerationRequest(input_ids=p, max_new_tokens=N, lora_name=a) for p, a in plan])
        assert engine.graphs.with_lora and overlapped
        for (prompt, adapter), got in zip(plan, results, strict=True):
            model = AutoModelForCausalLM.from_pretrained(llm_tiny_dir, dtype=torch.float32)
            if adapter is not None:
                model = PeftModel.from_pretrained(model, llm_tiny_lora_dir / adapter)
                model = model.merge_and_unload()
            with torch.no_grad():
                want = model.eval().generate(torch.tensor([prompt]), max_new_tokens=N,
                                             do_sample=False)[0, len(prompt):].tolist()
            assert tokens_of(got) == want, (prompt, adapter)
    finally:
        engine.shutdown()
