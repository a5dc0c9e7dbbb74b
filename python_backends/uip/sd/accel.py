"""GPU speed for the SD networks (pure torch, no Triton): channels_last, torch.compile, and
CUDA graphs per batch bucket captured at start-up.

Spec parameters (of `sd_unet` / `sd_vae_decoder`, or of `stable_diffusion` when co-located):
- `channels_last` (default true on CUDA): the module's convolution weights in NHWC;
- `compile` (false): `torch.compile` the UNet (and the VAE decoder, `compile_vae`), mode
  `compile_mode` (default "default": CUDA graphs are ours, below), batch dimension dynamic
  (`compile_dynamic`, true) so one compilation serves every bucket;
- `compile_cache_dir`: Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, FX graph cache on),
  so a restart loads the kernels instead of compiling them again;
- `cuda_graphs` (false) with `graph_buckets` ("1,2,4,8,16": UNet rows; a call is padded to the
  smallest bucket that holds it): one CUDA graph per bucket for the default latent size,
  captured at start-up (the time is logged); other shapes and bigger batches run unGraphed.
SDPA is diffusers' default attention on torch 2 (flash / memory-efficient kernels in fp16).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger("uip.sd")


@dataclass(frozen=True)
class Acceleration:
    channels_last: bool = False
    compile: bool = False
    compile_vae: bool = False
    compile_mode: str = "default"
    compile_dynamic: bool = True
    compile_cache_dir: str = ""
    cuda_graphs: bool = False
    graph_buckets: tuple[int, ...] = (1, 2, 4, 8, 16)

    @classmethod
    def from_settings(cls, settings, device: str) -> Acceleration:
        cuda = str(device).startswith("cuda")
        p = settings.param
        buckets = tuple(sorted({int(b) for b in p("graph_buckets", "1,2,4,8,16").split(",")
                                if b.strip()}))
        out = cls(channels_last=p("channels_last", cuda, bool), compile=p("compile", False, bool),
                  compile_vae=p("compile_vae", False, bool),
                  compile_mode=p("compile_mode", "default"),
                  compile_dynamic=p("compile_dynamic", True, bool),
                  compile_cache_dir=p("compile_cache_dir", ""),
                  cuda_graphs=p("cuda_graphs", False, bool), graph_buckets=buckets)
        if out.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs a GPU instance (instances: kind gpu)")
        if any(b < 1 for b in buckets):
            raise ValueError("graph_buckets must be positive batch sizes")
        return out

    def prepare(self, module: torch.nn.Module, compile_it: bool,
                fn: Callable | None = None) -> Callable:
        """The module in channels_last; `fn` (default: the module) compiled when asked."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        fn = fn or module
        if not compile_it:
            return fn
        if self.compile_cache_dir:
            os.makedirs(self.compile_cache_dir, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.compile_cache_dir
            os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
        return torch.compile(fn, mode=self.compile_mode, fullgraph=True,
                             dynamic=self.compile_dynamic or None)


class GraphedCall:
    """`fn(x, t, h)` replayed from CUDA graphs, one per batch bucket, for one sample shape.

    Inputs are copied into the bucket's static tensors (rows past the batch keep whatever they
    held: samples do not mix, so they only cost compute); the output is cloned, as the next
    replay overwrites it. `__call__` returns None for a shape it has no graph for.
    """

    def __init__(self, fn: Callable, buckets: tuple[int, ...], x_shape: tuple[int, ...],
                 h_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                 warm_runs: int = 2):
        self.x_shape, self.h_shape = tuple(x_shape), tuple(h_shape)
        self.graphs: dict[int, tuple] = {}
        self.capture_s: dict[int, float] = {}
        pool = None
        for b in sorted(buckets, reverse=True):  # the biggest first: the others share its pool
            t0 = time.perf_counter()
            x = torch.zeros((b, *self.x_shape), device=device, dtype=dtype)
            t = torch.full((b,), 999.0, device=device, dtype=torch.float32)
            h = torch.zeros((b, *self.h_shape), device=device, dtype=dtype)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(warm_runs):  # compiles (first bucket), autotunes, allocates
                    fn(x, t, h)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                out = fn(x, t, h)
            pool = graph.pool()
            torch.cuda.synchronize(device)
            self.graphs[b] = (graph, x, t, h, out)
            self.capture_s[b] = time.perf_counter() - t0
        self.buckets = sorted(self.graphs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        n = x.shape[0]
        if tuple(x.shape[1:]) != self.x_shape or tuple(h.shape[1:]) != self.h_shape:
            return None
        b = next((b for b in self.buckets if b >= n), None)
        if b is None:
            return None
        graph, sx, st, sh, out = self.graphs[b]
        sx[:n].copy_(x)
        st[:n].copy_(t)
        sh[:n].copy_(h)
        graph.replay()
        return out[:n].clone()
