"""GPU speed for the SD networks (pure torch, no Triton): channels_last, torch.compile, and
CUDA graphs per batch bucket captured at start-up.

Spec parameters (of `sd_unet` / `sd_vae_decoder`, or of `stable_diffusion` when co-located):
- `channels_last` (default true on CUDA): the module's convolution weights in NHWC;
- `compile` (false): `torch.compile` the UNet (and the VAE decoder, `compile_vae`), mode
  `compile_mode` (default "default": CUDA graphs are ours, below), batch dimension dynamic
  (`compile_dynamic`, true) so one compilation serves every bucket;
- `compile_cache_dir`: Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, FX graph cache on),
  so a restart loads the kernels instead of compiling them again;
- `fuse_qkv` (false): diffusers' `fuse_qkv_projections()` on the UNet (one GEMM for q/k/v of
  self-attention, one for k/v of cross-attention);
- `inductor`: Inductor config flags for `compile`, e.g.
  "conv_1x1_as_mm=1,coordinate_descent_tuning=1,epilogue_fusion=0";
- `cudnn_benchmark` (false): cuDNN times its convolution algorithms for each new shape and
  keeps the fastest (process-wide; shapes here are fixed per bucket);
- `self_attention` ("sdpa"): "cudnn" gives the UNet's plain self-attention layers a processor
  that calls cuDNN's fused attention on contiguous q/k/v (`uip.sd.attention`; GPU only; 2x
  FlashAttention-2 at 4,096 tokens with heads of 40 on the H200);
- `sdpa` ("auto"): the only fused SDPA backend allowed in this process, "flash", "cudnn" or
  "efficient" (the other fused ones are switched off; the math kernel stays on, so a shape the
  chosen one cannot take runs there, slowly; "auto" leaves torch's choice);
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

from uip.core.settings import FALSE_WORDS, TRUE_WORDS
from uip.sd.attention import use_cudnn_self_attention

log = logging.getLogger("uip.sd")


@dataclass(frozen=True)
class Acceleration:
    channels_last: bool = False
    compile: bool = False
    compile_vae: bool = False
    compile_mode: str = "default"
    compile_dynamic: bool = True
    compile_cache_dir: str = ""
    fuse_qkv: bool = False
    inductor: tuple[tuple[str, str], ...] = ()
    sdpa: str = "auto"
    self_attention: str = "sdpa"
    cudnn_benchmark: bool = False
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
                  fuse_qkv=p("fuse_qkv", False, bool),
                  inductor=_flags(p("inductor", "")), sdpa=p("sdpa", "auto"),
                  self_attention=p("self_attention", "sdpa"),
                  cudnn_benchmark=p("cudnn_benchmark", False, bool),
                  cuda_graphs=p("cuda_graphs", False, bool), graph_buckets=buckets)
        if out.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs a GPU instance (instances: kind gpu)")
        if out.self_attention not in SELF_ATTENTION:
            raise ValueError(f"self_attention must be one of {list(SELF_ATTENTION)}, "
                             f"got {out.self_attention!r}")
        if out.self_attention == "cudnn" and not cuda:
            raise ValueError("self_attention cudnn needs a GPU instance (instances: kind gpu)")
        if any(b < 1 for b in buckets):
            raise ValueError("graph_buckets must be positive batch sizes")
        if out.sdpa != "auto" and out.sdpa not in SDPA_BACKENDS:
            raise ValueError(f"sdpa must be one of {['auto', *sorted(SDPA_BACKENDS)]}, "
                             f"got {out.sdpa!r}")
        return out

    def prepare(self, module: torch.nn.Module, compile_it: bool,
                fn: Callable | None = None) -> Callable:
        """The module in channels_last (q/k/v fused when asked and it can); `fn` (default: the
        module) compiled when asked."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
        if self.self_attention == "cudnn" and hasattr(module, "attn_processors"):
            log.info("sd: %d self-attention layers on cuDNN", use_cudnn_self_attention(module))
        self.select_sdpa()
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        fn = fn or module
        if not compile_it:
            return fn
        import torch._inductor.config as inductor_config

        for name, value in self.inductor:
            if not hasattr(inductor_config, name):
                raise ValueError(f"inductor: torch._inductor.config has no flag {name!r}")
            setattr(inductor_config, name, _flag_value(value))
        if self.compile_cache_dir:
            os.makedirs(self.compile_cache_dir, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.compile_cache_dir
            os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
        return torch.compile(fn, mode=self.compile_mode, fullgraph=True,
                             dynamic=self.compile_dynamic or None)

    def select_sdpa(self) -> None:
        """Leave only the chosen SDPA backend on (process-wide: the SD networks' process)."""
        if self.sdpa != "auto":
            for name, enable in SDPA_BACKENDS.items():
                enable(name == self.sdpa)


SELF_ATTENTION = ("sdpa", "cudnn")
SDPA_BACKENDS = {"flash": torch.backends.cuda.enable_flash_sdp,
                 "cudnn": torch.backends.cuda.enable_cudnn_sdp,
                 "efficient": torch.backends.cuda.enable_mem_efficient_sdp}


def _flags(text: str) -> tuple[tuple[str, str], ...]:
    """ "a=1,b=0" -> (("a", "1"), ("b", "0")); a bare name means true."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            name, _, value = item.partition("=")
            out.append((name.strip(), value.strip() or "1"))
    return tuple(out)


def _flag_value(text: str) -> bool | int | float | str:
    low = text.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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
