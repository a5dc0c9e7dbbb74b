"""The LoRA expand of the dense form (lora.py) as one OpenAI Triton kernel (GPU; static
shapes, no host data, so it runs inside the decode CUDA graphs).

    y[t] += xa[t, slot(t)] @ B[slot(t)]    for every row t with slot(t) > 0 (0: the base)

in place, where xa [T, slots * W] holds every slot's shrink x @ A (the columns the folded base
GEMM appends to y) and B [slots * W, out] every slot's block-diagonal B stacked (a slot's W
rows are its parts' ranks side by side: part j of `parts` owns rows j*R..j*R+R-1 and output
columns parts[0] + ... + parts[j-1] onwards). One program per (out tile, row tile) runs a
masked GEMM over all slots' columns: xa entries of other slots are not loaded (zero), nor are
the B rows of slots no row of the tile uses and the off-diagonal (always zero) blocks, so it
reads only the weights the step needs, and adds to y in fp32 with one rounding. It replaces
the torch form's mask multiply and addmm (`lora.reference_lora_expand`, what it is tested
against; `TRITON_INTERPRET=1` runs it on CPU tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch form
    triton = None
    tl = None

AVAILABLE = triton is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if AVAILABLE:
    @triton.jit
    def _expand_kernel(y_ptr, xa_ptr, b_ptr, slot_ptr, T, N, K, W, R, bound1, bound2,
                       stride_yt, stride_xt, stride_bk, stride_s,
                       BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PRECISION: tl.constexpr):
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        t_ok = t < T
        t = t.to(tl.int64)  # row offsets of large steps pass 2**31
        n_ok = n < N
        part_n = (n >= bound1).to(tl.int32) + (n >= bound2).to(tl.int32)
        row_slot = tl.load(slot_ptr + t * stride_s, mask=t_ok, other=0).to(tl.int32) - 1
        acc = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            mine = (row_slot[:, None] == (k // W)[None, :]) & k_ok[None, :]  # base rows: -1
            used = tl.max(mine.to(tl.int32), 0) > 0  # [BLOCK_K]: some row of the tile has it
            xa = tl.load(xa_ptr + t[:, None] * stride_xt + k[None, :], mask=mine, other=0.0)
            keep = used[:, None] & (((k % W) // R)[:, None] == part_n[None, :]) & n_ok[None, :]
            b = tl.load(b_ptr + k[:, None] * stride_bk + n[None, :], mask=keep, other=0.0)
            acc += tl.dot(xa, b, input_precision=PRECISION)
        ptrs = y_ptr + t[:, None] * stride_yt + n[None, :]
        ok = t_ok[:, None] & n_ok[None, :]
        y = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
        tl.store(ptrs, (y + acc).to(y_ptr.dtype.element_ty), mask=ok)


def lora_expand(y: torch.Tensor, xa: torch.Tensor, row_slots: torch.Tensor, b: torch.Tensor,
                rank: int, parts: Sequence[int]) -> torch.Tensor:
    """y [T, out] += each row's xa [T, slots * W] columns of its slot @ B [slots * W, out]
    (W = rank * len(parts); `parts`: the out columns of each fused part, summing to out);
    row_slots [T] (any integer dtype, any stride; 0: no adapter). In place; returns y."""
    if not AVAILABLE:
        raise RuntimeError("the LoRA expand kernel needs the `triton` package")
    tokens, n = y.shape
    k = b.shape[0]
    width = rank * len(parts)
    if (xa.shape != (tokens, k) or b.shape[1] != n or k % width or sum(parts) != n
            or len(parts) > 3 or row_slots.shape != (tokens,)):
        raise ValueError(f"LoRA expand: y {list(y.shape)}, xa {list(xa.shape)}, B "
                         f"{list(b.shape)}, rank {rank}, parts {list(parts)} do not fit")
    if y.stride(1) != 1 or xa.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError("LoRA expand: y, xa and B need contiguous rows")
    bounds = [sum(parts[:j + 1]) for j in range(len(parts) - 1)] + [n, n]
    block_t = min(64, max(16, _next_pow2(tokens)))
    t_tiles = -(-tokens // block_t)
    block_n = 64 if -(-n // 64) * t_tiles >= 128 else 32  # enough programs to fill the GPU
    block_k = min(128, max(16, _next_pow2(k)))
    _expand_kernel[(-(-n // block_n), t_tiles)](
        y, xa, b, row_slots, tokens, n, k, width, rank, bounds[0], bounds[1],
        y.stride(0), xa.stride(0), b.stride(0), row_slots.stride(0),
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION="ieee" if y.dtype == torch.float32 else "tf32", num_warps=4)
    return y
