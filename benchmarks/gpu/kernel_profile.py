"""Where a call's GPU time goes, by kernel (shared by the benchmarks/gpu scripts).

`kernel_profile(fn)` runs `fn` under torch.profiler (CUDA activity), sums the device time of
every kernel by name and by category (attention, GEMM, convolution, Inductor's fused Triton
kernels, copies/other), and returns both, in ms per call.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import torch

CATEGORIES = (  # first match wins; names as CUPTI reports them
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|implicit_gemm|cudnn|xmma_fprop", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|nvjet|cublas|sm90_xmma|matmul|_mm_", re.I)),
    ("norm", re.compile(r"norm|welford|reduction", re.I)),
    ("inductor fused", re.compile(r"^triton_", re.I)),
    ("copy / memset", re.compile(r"copy|memcpy|memset|fill", re.I)),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def kernel_profile(fn: Callable[[], object], reps: int = 5, top: int = 12) -> dict:
    """{"total_ms", "categories": {label: ms}, "top": [[name, ms, calls], ...]} per call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        us = ev.time_range.elapsed_us()
        if ev.device_type == torch.autograd.DeviceType.CUDA and us > 0:
            row = by_name[ev.name]
            row[0] += us / 1000 / reps  # us -> ms per call
            row[1] += 1 / reps
    cats: dict[str, float] = defaultdict(float)
    for name, (ms, _) in by_name.items():
        cats[category(name)] += ms
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {"total_ms": sum(cats.values()),
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top": [[name[:90], round(ms, 3), round(n, 1)] for name, (ms, n) in ranked]}


def print_profile(label: str, prof: dict) -> None:
    print(f"\n{label}: {prof['total_ms']:.2f} ms of kernels per call")
    print("| category | ms | share |\n|---|---:|---:|")
    for cat, ms in prof["categories"].items():
        print(f"| {cat} | {ms:.2f} | {ms / max(prof['total_ms'], 1e-9):.0%} |")
    print("| kernel | ms | calls |\n|---|---:|---:|")
    for name, ms, n in prof["top"]:
        print(f"| `{name}` | {ms:.2f} | {n:g} |")
