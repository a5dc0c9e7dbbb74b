"""A diffusers attention processor for the UNet's self-attention that calls cuDNN's fused
attention directly (spec parameter `self_attention: cudnn`, GPU only).

At 512x512 the SD 1.5 UNet's widest self-attention runs 4,096 tokens with heads of 40.
FlashAttention-2 pads those heads to 64 (2.15 ms a call at 16 rows on the H200); cuDNN takes
them as they are (1.04 ms). Through `scaled_dot_product_attention`, though, torch 2.11 sends
the UNet's q/k/v (transposed views of the projections) to the math kernel when only cuDNN is
enabled (measured: `benchmarks/gpu/sdpa_check.py`). So this processor makes q/k/v contiguous
[B, H, S, D] and calls the cuDNN op itself; on the CPU (tests) it calls SDPA on the same
tensors. It serves only plain self-attention layers (no mask, norms, residual or rescale:
`serves`); every other layer keeps its processor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def serves(attn) -> bool:
    """A plain self-attention layer: what `CudnnSelfAttention` computes exactly."""
    return (not attn.is_cross_attention and attn.spatial_norm is None
            and attn.group_norm is None and getattr(attn, "norm_q", None) is None
            and getattr(attn, "norm_k", None) is None and not attn.residual_connection
            and attn.rescale_output_factor == 1.0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for contiguous [B, H, S, D]: cuDNN's kernel on the GPU."""
    if q.is_cuda:
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False)[0]
    return F.scaled_dot_product_attention(q, k, v)


class CudnnSelfAttention:
    """Processor for `serves` layers: [B, S, C] in, [B, S, C] out (fused q/k/v or not)."""

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("CudnnSelfAttention serves self-attention without a mask only")
        x = hidden_states
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        b, heads = x.shape[0], attn.heads
        d = q.shape[-1] // heads
        q, k, v = (t.view(b, -1, heads, d).transpose(1, 2).contiguous() for t in (q, k, v))
        out = attend(q, k, v).transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def use_cudnn_self_attention(module: torch.nn.Module) -> int:
    """Give every plain self-attention layer of `module` the cuDNN processor; how many."""
    from diffusers.models.attention_processor import Attention

    layers = [m for m in module.modules() if isinstance(m, Attention) and serves(m)]
    processor = CudnnSelfAttention()
    for m in layers:
        m.set_processor(processor)
    return len(layers)
