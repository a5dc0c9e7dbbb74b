"""Attention over the paged KV cache: the step's metadata and the reference implementation.

The cache of one layer is two tensors shaped [num_blocks, block_size, kv_heads, head_dim];
a token's *slot* is `block * block_size + offset`. One engine step runs a flat batch of T
tokens: first the decode tokens (one per decoding sequence), then the prefill chunks. Every
layer writes the new tokens' K/V to their slots (`write_kv`) and then attends (`attend`):

- decode rows gather each sequence's K/V through its slot indices (`gather_kv`, padded to the
  longest context and masked) and run one batched SDPA: this is the function a GPU
  paged-attention kernel replaces;
- a prefill chunk attends causally over its cached prefix plus itself; a chunk with no prefix
  uses its own fresh K/V (no gather).

`StepMeta` is built once per step and shared by all layers (and, later, captured by CUDA
graphs for the decode-only buckets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Prefill:
    start: int  # first row of this chunk in the flat batch
    length: int  # tokens in the chunk
    context: int  # tokens attended to: cached prefix + this chunk
    slots: torch.Tensor | None  # [context] slot indices; None when there is no prefix


@dataclass
class StepMeta:
    slot_mapping: torch.Tensor  # [T] where each new token's K/V goes
    num_decode: int  # rows [0, num_decode) are decode tokens
    decode_slots: torch.Tensor | None  # [B, L] slot indices of each decode row's context
    decode_mask: torch.Tensor | None  # [B, 1, 1, L] True where a key is attended to
    prefills: list[Prefill]


def build_meta(slot_mapping: list[int], decode_tables: list[list[int]],
               decode_lens: list[int], prefills: list[tuple[int, int, int, list[int]]],
               block_size: int, device: torch.device) -> StepMeta:
    """`prefills`: (start, length, context, block table) per chunk."""
    def slots(table: list[int], n: int) -> torch.Tensor:
        t = torch.tensor(table, dtype=torch.long)
        pos = torch.arange(n)
        return t[pos // block_size] * block_size + pos % block_size

    decode_slots = decode_mask = None
    if decode_tables:
        width = max(decode_lens)
        rows = [slots(t, n) for t, n in zip(decode_tables, decode_lens, strict=True)]
        decode_slots = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            decode_slots[i, :r.numel()] = r
        lens = torch.tensor(decode_lens)
        decode_mask = (torch.arange(width)[None, :] < lens[:, None])[:, None, None, :]
        decode_slots, decode_mask = decode_slots.to(device), decode_mask.to(device)
    chunks = [Prefill(start, length, context,
                      slots(table, context).to(device) if context > length else None)
              for start, length, context, table in prefills]
    return StepMeta(torch.tensor(slot_mapping, dtype=torch.long, device=device),
                    len(decode_tables), decode_slots, decode_mask, chunks)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [T, kv_heads, head_dim] into their slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def gather_kv(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The K or V of `slots` ([..., L]) -> [..., L, kv_heads, head_dim]."""
    return cache.view(-1, *cache.shape[2:])[slots]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     meta: StepMeta) -> torch.Tensor:
    """Reference paged decode attention. q: [B, heads, head_dim] -> [B, heads, head_dim]."""
    k = gather_kv(k_cache, meta.decode_slots).transpose(1, 2)  # [B, kv_heads, L, D]
    v = gather_kv(v_cache, meta.decode_slots).transpose(1, 2)
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=meta.decode_mask,
                                         enable_gqa=True)
    return out[:, :, 0, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
           v_cache: torch.Tensor, meta: StepMeta) -> torch.Tensor:
    """q: [T, heads, D]; k, v: [T, kv_heads, D] (already written to the cache) -> [T, heads, D]."""
    out = torch.empty_like(q)
    if meta.num_decode:
        out[:meta.num_decode] = decode_attention(q[:meta.num_decode], k_cache, v_cache, meta)
    for p in meta.prefills:
        qs = q[p.start:p.start + p.length].transpose(0, 1)[None]  # [1, heads, n, D]
        if p.slots is None:
            ks = k[p.start:p.start + p.length].transpose(0, 1)[None]
            vs = v[p.start:p.start + p.length].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            ks = gather_kv(k_cache, p.slots).transpose(0, 1)[None]
            vs = gather_kv(v_cache, p.slots).transpose(0, 1)[None]
            # query i sits at position context - length + i: keys up to there
            offset = p.context - p.length
            mask = (torch.arange(p.context, device=q.device)[None, :]
                    <= torch.arange(p.length, device=q.device)[:, None] + offset)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
        out[p.start:p.start + p.length] = o[0].transpose(0, 1)
    return out
