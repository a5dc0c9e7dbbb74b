"""Which SDPA kernel the SD UNet's own attention calls can take (GPU machine; ~40 s, eager).

    python benchmarks/gpu/sdpa_check.py FOLDER [--rows 16] [--json FILE]

attention_bench.py times the backends on contiguous tensors; inside the UNet, q/k/v are
views of the projections (and with `fuse_qkv`, slices of one fused projection), and a backend
that rejects such a layout makes torch fall back to the math kernel (in a compiled graph: fp32
GEMMs and a softmax, ~3x the step). For each `fuse_qkv` setting this records the tensors of
the UNet's SDPA calls (one per distinct shape), asks torch whether cuDNN and FlashAttention
can take them (`can_use_*_attention(..., debug=True)`, whose warnings give the reason), and
times the eager UNet at `rows` with `sdpa` flash and cudnn (attention kernels by name).
Prints one line `choice: sdpa=... fuse_qkv=...` last: the fastest set-up whose attention
all ran on a fused kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch
from gpu_timing import cuda_ms  # benchmarks/gpu, this script's folder
from kernel_profile import kernel_profile

from uip.sd.accel import Acceleration
from uip.sd.models import UNet, graph_shapes

DEV = torch.device(os.environ.get("SDV_DEVICE", "cuda"))
CUDA = DEV.type == "cuda"
DTYPE = torch.float16 if CUDA else torch.float32


def layouts(call) -> list[dict]:
    """Run `call` once, recording the first SDPA call of each (q, k) shape and stride."""
    seen: dict[tuple, dict] = {}
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):
        key = (tuple(q.shape), q.stride(), tuple(k.shape), k.stride())
        if key not in seen:
            seen[key] = {"q": [list(q.shape), list(q.stride())],
                         "k": [list(k.shape), list(k.stride())],
                         "v_stride": list(v.stride()), "mask": kw.get("attn_mask") is not None,
                         **{name: verdict(name, q, k, v) for name in ("cudnn", "flash")}}
        return real(q, k, v, *args, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        call()
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    return list(seen.values())


def verdict(name: str, q, k, v) -> str:
    """'ok', or the reasons torch gives for refusing these tensors."""
    check = getattr(torch.backends.cuda, f"can_use_{name}_attention", None)
    if check is None:
        return "torch has no check"
    try:
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, False)
    except TypeError:
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = check(params, True)
    return "ok" if ok else "; ".join(str(w.message).splitlines()[0][:160] for w in caught)


def measure(folder: Path, rows: int, fuse: bool, sdpa: str, self_attention: str = "sdpa",
            ref: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """One set-up: the UNet's SDPA calls and the verdicts on them; eager time and kernels;
    the largest difference of its output from `ref` (the same seeded inputs)."""
    unet = UNet(folder, str(DEV), DTYPE, accel=Acceleration(
        channels_last=CUDA, fuse_qkv=fuse, sdpa=sdpa, self_attention=self_attention))
    sample, hidden_shape = graph_shapes(folder, unet.model.config)
    g = torch.Generator(DEV).manual_seed(0)
    x = torch.randn(rows, *sample, device=DEV, dtype=DTYPE, generator=g)
    t = torch.full((rows,), 500.0, device=DEV)
    h = torch.randn(rows, *hidden_shape, device=DEV, dtype=DTYPE, generator=g)

    def call():
        return unet(x, t, h)

    with torch.inference_mode():
        row = {"fuse_qkv": fuse, "sdpa": sdpa, "self_attention": self_attention,
               "calls": layouts(call)}
        out = call().float()
        if ref is not None:
            row["max_abs_diff"] = float((out - ref).abs().max())
        if CUDA:
            row["unet_ms"] = cuda_ms(call, 10)
            row["profile"] = kernel_profile(call, reps=2, top=6)
    # "auto": torch picks among the fused kernels; a call that none takes shows in the profile
    row["all_fused"] = sdpa == "auto" or all(c[sdpa] == "ok" for c in row["calls"])
    return row, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--json", default="")
    p.add_argument("--processor-only", action="store_true",
                   help="only the uip.sd.attention set-ups (self_attention=cudnn)")
    a = p.parse_args()
    rows = a.rows if CUDA else 2
    out, best, ref = [], None, None
    setups = [(False, "flash", "sdpa"), (False, "cudnn", "sdpa"), (True, "flash", "sdpa"),
              (True, "cudnn", "sdpa"), (False, "auto", "cudnn"), (True, "auto", "cudnn")]
    for fuse, sdpa, self_attention in [setups[0], *setups[4:]] if a.processor_only else setups:
        row, result = measure(Path(a.folder), rows, fuse, sdpa, self_attention, ref)
        ref = result if ref is None else ref
        ms = row.get("unet_ms", 0.0)
        attention = row.get("profile", {}).get("categories", {}).get("attention", 0.0)
        print(f"fuse_qkv={fuse} sdpa={sdpa} self_attention={self_attention}: UNet {ms:.2f} "
              f"ms at {rows} rows eager; attention {attention:.2f} ms; every SDPA call on a "
              f"fused kernel: {row['all_fused']}; max |diff| from the first set-up "
              f"{row.get('max_abs_diff', 0.0):.4f}")
        for c in row["calls"]:
            print(f"  q {c['q']} k {c['k']}: cudnn {c['cudnn']}; flash {c['flash']}")
        if row["all_fused"] and (best is None or ms < best["unet_ms"]):
            best = {"unet_ms": ms, "sdpa": sdpa, "fuse_qkv": fuse,
                    "self_attention": self_attention}
        out.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": out, "best": best}, indent=1))
    best = best or {"sdpa": "auto", "fuse_qkv": False, "self_attention": "sdpa"}
    print(f"choice: sdpa={best['sdpa']} fuse_qkv={str(best['fuse_qkv']).lower()} "
          f"self_attention={best['self_attention']}")


if __name__ == "__main__":
    main()
