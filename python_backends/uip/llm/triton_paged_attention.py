"""Paged decode attention as an OpenAI Triton kernel (GPU; static shapes for CUDA graphs).

One program per (sequence, KV head) covers that head's whole query group: it walks the
sequence's block table `BLOCK_N` tokens at a time, up to the sequence's length read from the
device (so a captured graph serves any context length up to the table's width), and keeps an
online softmax in fp32. Inputs:

- q [B, heads, D]; k_cache, v_cache [num_blocks, block_size, kv_heads, D];
- tables [B, max_blocks] (any integer dtype; unused entries are never read);
- lens [B] context length of each row, its new token included (>= 1).

`reference_paged_decode` is the same computation in plain torch (gather over the table's whole
width, masked by the lengths: `paged_attention.decode_attention`); the kernel is tested against
it, and CPU tests run the static-shape decode path with it. `TRITON_INTERPRET=1` runs the
kernel on CPU tensors.
"""

from __future__ import annotations

import math

import torch

from uip.llm.paged_attention import StepMeta, decode_attention

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps the reference path
    triton = None
    tl = None

AVAILABLE = triton is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if AVAILABLE:
    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale,
                       stride_qb, stride_qh, stride_kb, stride_kt, stride_kh,
                       stride_tb, stride_lb, stride_ob, stride_oh,
                       GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, HEAD_DIM)
        n = tl.arange(0, BLOCK_N)
        h_ok = h < GROUP
        heads = kvh * GROUP + h
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                    mask=h_ok[:, None], other=0.0)
        length = tl.load(lens_ptr + b * stride_lb).to(tl.int32)
        m = tl.full([BLOCK_H], -float("inf"), tl.float32)
        lsum = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        for start in range(0, length, BLOCK_N):
            tok = start + n
            ok = tok < length
            block = tl.load(tables_ptr + b * stride_tb + tok // PAGE, mask=ok, other=0)
            row = block.to(tl.int64) * stride_kb + (tok % PAGE) * stride_kt + kvh * stride_kh
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
            s = tl.where(ok[None, :], s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            lsum = lsum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v,
                                                input_precision=PRECISION).to(tl.float32)
            m = m_new
        out = acc / lsum[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])


def reference_paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           tables: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """What `paged_decode` computes, in plain torch (any device; static shapes)."""
    width = tables.shape[1] * k_cache.shape[1]
    mask = (torch.arange(width, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    meta = StepMeta(slot_mapping=lens, num_decode=q.shape[0], decode_tables=tables.long(),
                    decode_mask=mask, prefills=[])
    return decode_attention(q, k_cache, v_cache, meta)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 tables: torch.Tensor, lens: torch.Tensor, block_n: int = 64) -> torch.Tensor:
    """Decode attention over the paged cache: q [B, heads, D] -> [B, heads, D]."""
    if not AVAILABLE:
        raise RuntimeError("the Triton paged-attention kernel needs the `triton` package")
    batch, heads, dim = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    if heads % kv_heads or dim != _next_pow2(dim) or k_cache.stride(3) != 1:
        raise ValueError(f"unsupported shape: heads {heads}, kv_heads {kv_heads}, head_dim {dim}")
    if q.stride(2) != 1:
        q = q.contiguous()
    group = heads // kv_heads
    out = torch.empty_like(q)
    if block_n < 16 or block_n != _next_pow2(block_n):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    if v_cache.stride() != k_cache.stride() or tables.stride(1) != 1:
        raise ValueError("k_cache and v_cache must share strides; tables rows contiguous")
    _decode_kernel[(batch, kv_heads)](
        q, k_cache, v_cache, tables, lens, out, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        tables.stride(0), lens.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_H=max(16, _next_pow2(group)), BLOCK_N=block_n, HEAD_DIM=dim,
        PAGE=page, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4)
    return out
