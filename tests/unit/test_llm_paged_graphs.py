"""The static-shape decode path of PagedEngine's CUDA graphs: the reference of the Triton
paged-decode kernel against the gather reference (CPU), the kernel against its reference
(GPU only), and the engine's decode-only steps through `DecodeGraphs` (run eagerly on CPU,
with the reference as the kernel) equal transformers `generate` token for token."""

from __future__ import annotations

import pytest
import torch
from engine_contract import N, run_concurrently, tokens_of
from test_llm_paged_engine import CONFIG, TEXTS, generate

from uip.core.settings import ModelSettings
from uip.llm import triton_paged_attention as tpa
from uip.llm.cuda_graphs import DecodeGraphs, default_buckets
from uip.llm.engine import GenerationRequest
from uip.llm.paged_attention import build_meta, decode_attention
from uip.llm.paged_runtime import PagedEngine, PagedEngineConfig

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


@pytest.mark.skipif(not (torch.cuda.is_available() and tpa.AVAILABLE),
                    reason="the Triton kernel needs a CUDA GPU")
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(8, 2, 32), (32, 8, 128), (4, 4, 64)])
def test_triton_kernel_equals_reference(heads, kv_heads, dim):
    q, kc, vc, _, padded, lens = _case(torch.bfloat16, "cuda", heads, kv_heads, dim)
    expected = tpa.reference_paged_decode(q.float(), kc.float(), vc.float(), padded, lens)
    got = tpa.paged_decode(q, kc, vc, padded.int(), lens.int(), block_n=16)
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


def test_default_buckets():
    assert default_buckets(1) == [1]
    assert default_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


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


def test_static_decode_path_equals_generate(llm_tiny_dir, reference, prompts):
    """Decode-only steps of 1..8 rows padded to buckets 1, 2, 4, 8 (the CUDA-graph inputs,
    eager on CPU); padding writes to a scratch block no sequence owns."""
    engine = PagedEngine(llm_tiny_dir, PagedEngineConfig(**CONFIG.__dict__))
    try:
        scratch = engine.blocks.num_blocks
        engine.cache = engine.runner.allocate_cache(scratch + 1, engine.block_size)  # idle yet
        graphs = DecodeGraphs(engine.runner, engine.cache, engine.block_size, scratch,
                              -(-engine.max_context // engine.block_size), [1, 2, 4, 8],
                              kernel=tpa.reference_paged_decode)
        calls: list[int] = []
        overlapped: list[int] = []
        run = graphs.run

        def spy(ids, *a, prev=None):
            calls.append(len(ids))
            if prev is not None:
                overlapped.append(len(ids))
            return run(ids, *a, prev=prev)

        graphs.run = spy  # type: ignore[method-assign]
        engine.graphs = graphs
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
