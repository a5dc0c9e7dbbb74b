"""GPU time of a call, by CUDA events (shared by the benchmarks/gpu scripts)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def cuda_ms(fn: Callable[[], object], reps: int = 30, warm: int = 1) -> float:
    """Mean milliseconds of GPU time per `fn()` over `reps` calls, after `warm` calls."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps
