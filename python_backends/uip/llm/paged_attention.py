"""Attention over the paged KV cache: the step's metadata and the reference implementation.

The cache of one layer is two tensors shaped [num_blocks, block_size, kv_heads, head_dim];
a token's *slot* is `block * block_size + offset`. One engine step runs a flat batch of T
tokens: first the decode tokens (one per decoding sequence), then the prefill chunks. Every
layer writes the new tokens' K/V to their slots (`write_kv`) and then attends (`attend`):

- decode rows gather each sequence's K/V block by block through its block table
  (`gather_kv`, padded to the longest table and masked) and run one batched SDPA:
  `decode_attention` is the function a GPU paged-attention kernel replaces;
- a prefill chunk attends causally over its cached prefix plus itself; a chunk with no prefix
  uses its own fresh K/V (no gather); back-to-back chunks of one length and one context (a
  burst of new prompts, with or without a cached prefix) share one batched SDPA call.

`StepMeta` is built once per step and shared by all layers; the decode-only steps on a GPU
run a captured CUDA graph instead (cuda_graphs.py) whose `StepMeta` views static buffers and
names a decode kernel of static shapes (triton_paged_attention.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN attention builds a new plan for every new shape (~5 ms of CPU each, seen on an H200):
# the decode context grows every step, so it is left out on the GPU.
_GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class Prefill:
    start: int  # first row of this chunk in the flat batch
    length: int  # tokens in the chunk
    context: int  # tokens attended to: cached prefix + this chunk
    blocks: torch.Tensor | None  # [ceil(context / block_size)] block ids; None: no prefix


@dataclass
class StepMeta:
    slot_mapping: torch.Tensor  # [T] where each new token's K/V goes
    num_decode: int  # rows [0, num_decode) are decode tokens
    decode_tables: torch.Tensor | None  # [B, max_blocks] block tables (padded with block 0)
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] True: attended
    prefills: list[Prefill]
    # a decode kernel over (q, k_cache, v_cache, tables, lens) with static shapes (CUDA graphs,
    # triton_paged_attention.paged_decode): then `decode_lens` [B] holds the context lengths
    # and `decode_mask` is unused
    decode_kernel: Callable[..., torch.Tensor] | None = None
    decode_lens: torch.Tensor | None = None
    # decode-only steps (CUDA graphs): RoPE and the K/V write in one kernel over (qkv, cos,
    # sin, positions, slot_mapping, k_cache, v_cache) -> q (triton_paged_attention)
    rope_kv_kernel: Callable[..., torch.Tensor] | None = None


def to_device(data: list, device: torch.device, dtype: torch.dtype = torch.long
              ) -> torch.Tensor:
    """A host list on `device` without a host sync: a blocking host-to-GPU copy waits for the
    stream, a copy from pinned memory does not (the pinned block is reused only once the copy
    is done: torch's host allocator records it)."""
    t = torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def build_meta(slot_mapping: list[int], decode_tables: list[list[int]],
               decode_lens: list[int], prefills: list[tuple[int, int, int, list[int]]],
               block_size: int, device: torch.device) -> StepMeta:
    """`decode_lens`: context length of each decode row (its new token included);
    `prefills`: (start, length, context, block table) per chunk."""
    tables = mask = None
    if decode_tables:
        used = [-(-n // block_size) for n in decode_lens]
        width = max(used)
        tables = to_device([t[:u] + [0] * (width - u)
                            for t, u in zip(decode_tables, used, strict=True)], device)
        lens = to_device(decode_lens, device)
        mask = (torch.arange(width * block_size, device=device)[None, :]
                < lens[:, None])[:, None, None, :]
    chunks = [Prefill(start, length, context,
                      to_device(table[:-(-context // block_size)], device)
                      if context > length else None)
              for start, length, context, table in prefills]
    return StepMeta(to_device(slot_mapping, device), len(decode_tables), tables, mask, chunks)


def backends(device: torch.device):
    """The SDPA backends of one step (a context manager)."""
    return sdpa_kernel(_GPU_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [T, kv_heads, head_dim] into their slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def gather_kv(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """The K or V of whole blocks: tables [..., n] -> [..., n * block_size, kv_heads, D]."""
    blocks = cache[tables]
    return blocks.reshape(*tables.shape[:-1], -1, *cache.shape[2:])


def _masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """SDPA with a bool mask and grouped K/V heads ([..., heads or kv_heads, L, D])."""
    if q.is_cuda:  # masked GQA would fall back to the math kernel: expand the K/V heads
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     meta: StepMeta) -> torch.Tensor:
    """Reference paged decode attention. q: [B, heads, head_dim] -> [B, heads, head_dim]."""
    k = gather_kv(k_cache, meta.decode_tables).transpose(1, 2)  # [B, kv_heads, L, D]
    v = gather_kv(v_cache, meta.decode_tables).transpose(1, 2)
    return _masked_sdpa(q[:, :, None, :], k, v, meta.decode_mask)[:, :, 0, :]


def _runs(prefills: list[Prefill]) -> list[list[Prefill]]:
    """Prefill chunks grouped into runs of consecutive chunks that lie back to back in the flat
    batch with one length and one context, all with a cached prefix or all without (a burst
    of new prompts, cached or not): each run is one batched SDPA call."""
    runs: list[list[Prefill]] = []
    for p in prefills:
        if runs:
            run = runs[-1]
            first = run[0]
            if (first.length == p.length and first.context == p.context
                    and (first.blocks is None) == (p.blocks is None)
                    and p.start == first.start + len(run) * first.length):
                run.append(p)
                continue
        runs.append([p])
    return runs


def attend(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
           k_cache: torch.Tensor, v_cache: torch.Tensor, meta: StepMeta) -> torch.Tensor:
    """q: [T, heads, D]; k, v: [T, kv_heads, D] (already written to the cache; only prefill
    chunks read them) -> [T, heads, D]."""
    if meta.decode_kernel is not None and not meta.prefills:  # no copy into a fresh `out`
        return meta.decode_kernel(q, k_cache, v_cache, meta.decode_tables, meta.decode_lens)
    out = torch.empty_like(q)
    if meta.num_decode and meta.decode_kernel is not None:
        out[:meta.num_decode] = meta.decode_kernel(q[:meta.num_decode], k_cache, v_cache,
                                                   meta.decode_tables, meta.decode_lens)
    elif meta.num_decode:
        out[:meta.num_decode] = decode_attention(q[:meta.num_decode], k_cache, v_cache, meta)
    for run in _runs(meta.prefills):  # one SDPA per run of equal chunks
        first, n, length = run[0], len(run), run[0].length
        span = slice(first.start, first.start + n * length)
        qs = q[span].view(n, length, *q.shape[1:]).transpose(1, 2)  # [n, heads, L, D]
        if first.blocks is None:  # no prefix: the chunks' own K/V
            ks, vs = (x[span].view(n, length, *x.shape[1:]).transpose(1, 2) for x in (k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:  # the cached prefix and the chunk, from the cache
            tables = torch.stack([p.blocks for p in run]) if n > 1 else first.blocks[None]
            ks, vs = (gather_kv(c, tables)[:, :first.context].transpose(1, 2)
                      for c in (k_cache, v_cache))
            # query i sits at position context - length + i: keys up to there
            offset = first.context - length
            mask = (torch.arange(first.context, device=q.device)[None, :]
                    <= torch.arange(length, device=q.device)[:, None] + offset)
            o = _masked_sdpa(qs, ks, vs, mask)
        out[span] = o.transpose(1, 2).reshape(n * length, *q.shape[1:])
    return out
