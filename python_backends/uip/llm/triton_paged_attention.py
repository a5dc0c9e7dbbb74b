"""Paged decode attention as an OpenAI Triton kernel (GPU; static shapes for CUDA graphs).

One program per (sequence, KV head, context split) covers that head's whole query group: it
walks its share of the sequence's block table `BLOCK_N` tokens at a time, up to the
sequence's length read from the device (so a captured graph serves any context length up to
the table's width), and keeps an online softmax in fp32. At small batch the context is split
(flash-decoding: `num_splits` programs per row and head, chosen from the static shape) and a
second kernel merges the partial results by their log-sum-exp. Inputs:

- q [B, heads, D]; k_cache, v_cache [num_blocks, block_size, kv_heads, D];
- tables [B, max_blocks] (any integer dtype; unused entries are never read);
- lens [B] context length of each row, its new token included (>= 1).

`reference_paged_decode` is the same computation in plain torch (gather over the table's whole
width, masked by the lengths: `paged_attention.decode_attention`); the kernel is tested against
it, and CPU tests run the static-shape decode path with it. `TRITON_INTERPRET=1` runs the
kernel on CPU tensors.

`rope_write_kv` is the decode steps' other kernel: RoPE on q and k of the fused [q; k; v] rows
and the K/V write into the paged cache, in one launch (`reference_rope_write_kv` in torch).
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
    def _decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_ptr, lse_ptr,
                       scale, stride_qb, stride_qh, stride_kb, stride_kt, stride_kh,
                       stride_tb, stride_lb, stride_ob, stride_oh,
                       GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr,
                       SPLITS: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, HEAD_DIM)
        n = tl.arange(0, BLOCK_N)
        h_ok = h < GROUP
        heads = kvh * GROUP + h
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                    mask=h_ok[:, None], other=0.0)
        length = tl.load(lens_ptr + b * stride_lb).to(tl.int32)
        # this split's share of the context: whole BLOCK_N tiles, from the length on the device
        per_split = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
        begin = split * per_split
        end = tl.minimum(begin + per_split, length)
        m = tl.full([BLOCK_H], -float("inf"), tl.float32)
        lsum = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        for start in range(begin, end, BLOCK_N):
            tok = start + n
            ok = tok < end
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
        if SPLITS == 1:
            out = acc / lsum[:, None]
            tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
        else:  # partial result and its log-sum-exp; an empty split leaves (0, -inf)
            safe = tl.maximum(lsum, 1e-30)
            row_id = (b * tl.num_programs(1) * GROUP + heads) * SPLITS + split
            tl.store(part_ptr + row_id[:, None] * HEAD_DIM + d[None, :], acc / safe[:, None],
                     mask=h_ok[:, None])
            tl.store(lse_ptr + row_id, tl.where(lsum > 0, m + tl.log(safe), -float("inf")),
                     mask=h_ok)

    @triton.jit
    def _combine_kernel(part_ptr, lse_ptr, out_ptr, stride_ob, stride_oh, heads,
                        HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        """Merge the splits of one (row, head): weights exp(lse - max lse)."""
        b = tl.program_id(0)
        hd = tl.program_id(1)
        sp = tl.arange(0, SPLITS)
        d = tl.arange(0, HEAD_DIM)
        base = (b * heads + hd) * SPLITS
        lse = tl.load(lse_ptr + base + sp)
        w = tl.exp(lse - tl.max(lse, 0))
        part = tl.load(part_ptr + (base + sp)[:, None] * HEAD_DIM + d[None, :])
        out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
        tl.store(out_ptr + b * stride_ob + hd * stride_oh + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _rope_kv_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_out_ptr, k_ptr, v_ptr,
                        stride_t, stride_c, stride_p, stride_s, stride_qt, stride_qh,
                        stride_ks, stride_kh, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                        HALF: tl.constexpr):
        """One (token, head) of the fused [q; k; v] rows: q rotated to q_out; k rotated and v
        as is written to the token's cache slot (fp32 math, one rounding)."""
        t = tl.program_id(0)
        hd = tl.program_id(1)
        d = tl.arange(0, HALF)
        pos = tl.load(pos_ptr + t * stride_p).to(tl.int64)
        src = qkv_ptr + t * stride_t + hd * (2 * HALF)
        if hd < HEADS + KV_HEADS:
            cos = tl.load(cos_ptr + pos * stride_c + d).to(tl.float32)
            sin = tl.load(sin_ptr + pos * stride_c + d).to(tl.float32)
            x1 = tl.load(src + d).to(tl.float32)
            x2 = tl.load(src + HALF + d).to(tl.float32)
            r1 = x1 * cos - x2 * sin
            r2 = x2 * cos + x1 * sin
            if hd < HEADS:
                dst = q_out_ptr + t * stride_qt + hd * stride_qh
                tl.store(dst + d, r1.to(q_out_ptr.dtype.element_ty))
                tl.store(dst + HALF + d, r2.to(q_out_ptr.dtype.element_ty))
            else:
                slot = tl.load(slot_ptr + t * stride_s).to(tl.int64)
                dst = k_ptr + slot * stride_ks + (hd - HEADS) * stride_kh
                tl.store(dst + d, r1.to(k_ptr.dtype.element_ty))
                tl.store(dst + HALF + d, r2.to(k_ptr.dtype.element_ty))
        else:
            slot = tl.load(slot_ptr + t * stride_s).to(tl.int64)
            dst = v_ptr + slot * stride_ks + (hd - HEADS - KV_HEADS) * stride_kh
            tl.store(dst + d, tl.load(src + d))
            tl.store(dst + HALF + d, tl.load(src + HALF + d))


def reference_paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           tables: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """What `paged_decode` computes, in plain torch (any device; static shapes)."""
    width = tables.shape[1] * k_cache.shape[1]
    mask = (torch.arange(width, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    meta = StepMeta(slot_mapping=lens, num_decode=q.shape[0], decode_tables=tables.long(),
                    decode_mask=mask, prefills=[])
    return decode_attention(q, k_cache, v_cache, meta)


def num_splits(batch: int, kv_heads: int, max_tokens: int, block_n: int,
               target_programs: int = 256, max_splits: int = 16) -> int:
    """Context splits (flash-decoding) for a static shape: enough programs to fill the GPU at
    small batch, at most one tile per split of the longest context; a power of two."""
    want = min(max_splits, -(-target_programs // (batch * kv_heads)), -(-max_tokens // block_n))
    return _next_pow2(max(1, want))


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 tables: torch.Tensor, lens: torch.Tensor, block_n: int = 64,
                 splits: int | None = None) -> torch.Tensor:
    """Decode attention over the paged cache: q [B, heads, D] -> [B, heads, D]. `splits`:
    context splits per (row, KV head), merged by a second kernel; None = `num_splits`."""
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
    if splits is None:
        splits = num_splits(batch, kv_heads, tables.shape[1] * page, block_n)
    if splits != _next_pow2(splits):
        raise ValueError(f"splits must be a power of two, got {splits}")
    part = lse = out
    if splits > 1:
        part = torch.empty(batch * heads * splits, dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(batch * heads * splits, dtype=torch.float32, device=q.device)
    _decode_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, tables, lens, out, part, lse, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        tables.stride(0), lens.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_H=max(16, _next_pow2(group)), BLOCK_N=block_n, HEAD_DIM=dim,
        PAGE=page, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SPLITS=splits,
        num_warps=4)
    if splits > 1:
        _combine_kernel[(batch, heads)](part, lse, out, out.stride(0), out.stride(1), heads,
                                        HEAD_DIM=dim, SPLITS=splits, num_warps=4)
    return out


def reference_rope_write_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            positions: torch.Tensor, slots: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """What `rope_write_kv` computes, in plain torch (any device)."""
    from uip.llm.llama import rope_qkv
    from uip.llm.paged_attention import write_kv

    kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
    heads = qkv.shape[1] // dim - 2 * kv_heads
    q, k, v = rope_qkv(qkv, cos, sin, positions, heads, kv_heads, dim)
    write_kv(k_cache, v_cache, k, v, slots)
    return q


def rope_write_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  positions: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor) -> torch.Tensor:
    """One kernel for RoPE and the K/V cache write: fused [q; k; v] rows [T, (H + 2 KV) * D]
    -> q [T, H, D] rotated; k (rotated) and v go to their slots of the paged cache."""
    if not AVAILABLE:
        raise RuntimeError("the fused RoPE + KV write kernel needs the `triton` package")
    kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
    tokens, width = qkv.shape
    heads = width // dim - 2 * kv_heads
    if qkv.stride(1) != 1 or cos.stride(1) != 1 or dim % 2 or (dim // 2) != _next_pow2(dim // 2):
        raise ValueError(f"unsupported layout: qkv strides {qkv.stride()}, head_dim {dim}")
    if v_cache.stride() != k_cache.stride() or k_cache.stride(1) != kv_heads * dim:
        raise ValueError("k_cache and v_cache must be contiguous with the same strides")
    q = torch.empty(tokens, heads, dim, dtype=qkv.dtype, device=qkv.device)
    _rope_kv_kernel[(tokens, heads + 2 * kv_heads)](
        qkv, cos, sin, positions, slots, q, k_cache, v_cache,
        qkv.stride(0), cos.stride(0), positions.stride(0), slots.stride(0), q.stride(0),
        q.stride(1), k_cache.stride(1), k_cache.stride(2), HEADS=heads, KV_HEADS=kv_heads,
        HALF=dim // 2, num_warps=1)
    return q
