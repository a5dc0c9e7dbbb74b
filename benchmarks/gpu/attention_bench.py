"""SDPA backends at the SD 1.5 UNet's attention shapes (GPU machine; ~30 s).

    python benchmarks/gpu/attention_bench.py [--rows 16] [--json FILE]

At 512x512 the UNet's self-attention runs at 4,096 tokens with 8 heads of 40 (then 1,024 x
80, 256 x 160, 64 x 160), and cross-attention at 77 text tokens. FlashAttention-2 pads a head
of 40 to 64. For each shape and each backend forced alone (flash, cuDNN, memory-efficient, and
math as the floor) and FlexAttention under torch.compile (Inductor's Triton kernel), this
prints the time per call and the TFLOP/s on the real head size. A backend that cannot take the
shape prints why instead of falling back. `SDPA_DEVICE=cpu` runs
a small smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from gpu_timing import cuda_ms  # benchmarks/gpu, this script's folder
from torch.nn.attention import SDPBackend, sdpa_kernel

DEV = torch.device(os.environ.get("SDPA_DEVICE", "cuda"))
CUDA = DEV.type == "cuda"
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
# (label, query tokens, key tokens, heads, head size): SD 1.5 at 64x64 latents
SHAPES = [("self 64x64", 4096, 4096, 8, 40), ("self 32x32", 1024, 1024, 8, 80),
          ("self 16x16", 256, 256, 8, 160), ("cross 64x64", 4096, 77, 8, 40)]


def time_ms(fn, reps: int) -> float:
    if CUDA:
        return cuda_ms(fn, reps)
    t = time.perf_counter()  # the CPU smoke test: one call
    fn()
    return (time.perf_counter() - t) * 1000


def flex_fn():
    """FlexAttention compiled (no mask, no score mod): Inductor's Triton attention kernel."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flash_impls() -> str:
    """The FlashAttention implementations this torch can switch to (FA3 needs its package)."""
    try:
        from torch.nn.attention import list_flash_attention_impls
    except ImportError:
        return "torch has no list_flash_attention_impls"
    return ", ".join(list_flash_attention_impls()) or "none registered"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16, help="UNet rows (2 per CFG request)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    rows, reps = (a.rows, 20) if CUDA else (1, 1)
    dtype = torch.float16 if CUDA else torch.float32
    out = []
    print(f"flash attention implementations: {flash_impls()}")
    flex = flex_fn() if CUDA else None
    print("| shape | backend | ms per call | TFLOP/s (real head size) |\n|---|---|---:|---:|")
    for label, nq, nk, heads, d in SHAPES:
        if not CUDA:
            nq, nk = min(nq, 256), min(nk, 256)
        q = torch.randn(rows, heads, nq, d, device=DEV, dtype=dtype)
        k = torch.randn(rows, heads, nk, d, device=DEV, dtype=dtype)
        v = torch.randn_like(k)
        flop = 4 * rows * heads * nq * nk * d
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        for name, backend in BACKENDS.items():
            row = {"shape": label, "backend": name, "rows": rows}
            try:
                with sdpa_kernel([backend]):
                    got = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    row["max_abs_diff"] = float((got - ref).abs().max())
                    row["ms"] = time_ms(lambda q=q, k=k, v=v: torch.nn.functional
                                        .scaled_dot_product_attention(q, k, v), reps)
                row["tflops"] = flop / row["ms"] / 1e9
                print(f"| {label} | {name} | {row['ms']:.3f} | {row['tflops']:.0f} |")
            except RuntimeError as exc:  # this backend cannot take the shape: say why
                row["error"] = str(exc).splitlines()[0][:160]
                print(f"| {label} | {name} | - | {row['error']} |")
            out.append(row)
        if flex is not None:
            row = {"shape": label, "backend": "flex (compiled)", "rows": rows}
            try:
                row["max_abs_diff"] = float((flex(q, k, v) - ref).abs().max())
                row["ms"] = time_ms(lambda q=q, k=k, v=v: flex(q, k, v), reps)
                row["tflops"] = flop / row["ms"] / 1e9
                print(f"| {label} | flex (compiled) | {row['ms']:.3f} | {row['tflops']:.0f} |")
            except Exception as exc:  # noqa: BLE001 - Inductor cannot build it: say why
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}"
                print(f"| {label} | flex (compiled) | - | {row['error']} |")
            out.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(0) if CUDA else "cpu",
                       "torch": torch.__version__, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
