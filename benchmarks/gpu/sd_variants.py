"""Where an SD step's time goes on the GPU, and which UNet build is fastest (GPU machine).

    python benchmarks/gpu/sd_variants.py FOLDER [--variants eager,compile,...] [--deadline EPOCH]
        [--rows 2,16] [--skip-loop] [--profile]

For each variant of `uip.sd.accel` settings (channels_last and CUDA graphs for buckets 2 and
16 in all): the capture (and compile) time and the GPU time of one UNet graph replay at 2 rows
(one CFG pair) and 16 rows (8 pairs). Then, with the first variant's UNet, one loop iteration
as the batcher runs it (`SDLoop.step`: inputs, the graphed UNet, guidance, each request's DDIM
step) for 1 and 8 requests, with the scheduler's timesteps on the host (what `uip.sd.loop`
does) and on the device (as diffusers' pipeline does: a host sync per step); the text encoder
for one prompt; the VAE decoder for one image, eager and compiled. Prints a table; --json
writes the numbers. --profile adds each variant's kernel time by category (attention, GEMM,
convolution, fused Inductor kernels...) and its top kernels at the largest row count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from gpu_timing import cuda_ms  # benchmarks/gpu, this script's folder
from kernel_profile import kernel_profile, print_profile

from uip.sd.accel import Acceleration
from uip.sd.loop import PipelineInfo, SDLoop, load_tokenizer
from uip.sd.models import TextEncoder, UNet, VaeDecoder, graph_shapes
from uip.sd.request import SDRequest
from uip.sd.schedulers import SchedulerFactory

FLAGS = (("conv_1x1_as_mm", "1"), ("coordinate_descent_tuning", "1"), ("epilogue_fusion", "0"))
STATIC = dict(compile=True, compile_dynamic=False)
VARIANTS = {
    "eager": {},
    "eager-cudnn": dict(sdpa="cudnn"),
    "eager-efficient": dict(sdpa="efficient"),
    "compile-dynamic": dict(compile=True, compile_dynamic=True),
    "compile": STATIC,
    "compile-fuse": dict(STATIC, fuse_qkv=True),
    "compile-fuse-flags": dict(STATIC, fuse_qkv=True, inductor=FLAGS),
    "compile-fuse-flags-cudnn": dict(STATIC, fuse_qkv=True, inductor=FLAGS, sdpa="cudnn"),
    "compile-fuse-flags-bench": dict(STATIC, fuse_qkv=True, inductor=FLAGS, cudnn_benchmark=True),
    "compile-fuse-flags-bench-cudnn": dict(STATIC, fuse_qkv=True, inductor=FLAGS,
                                           cudnn_benchmark=True, sdpa="cudnn"),
    "compile-cudnn-self": dict(STATIC, self_attention="cudnn"),  # uip.sd.attention
    "compile-fuse-flags-bench-freeze": dict(STATIC, fuse_qkv=True, cudnn_benchmark=True,
                                            inductor=(*FLAGS, ("freezing", "1"))),
    "autotune": dict(STATIC, fuse_qkv=True, inductor=FLAGS,
                     compile_mode="max-autotune-no-cudagraphs"),
}
DEV = torch.device(os.environ.get("SDV_DEVICE", "cuda"))  # cpu: a smoke test on a tiny model
CUDA = DEV.type == "cuda"
DTYPE = torch.float16 if CUDA else torch.float32


def gpu_ms(fn, reps: int = 30) -> float:
    return cuda_ms(fn, reps) if CUDA else wall_ms(fn, reps=2)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def wall_ms(fn, reps: int = 20) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) * 1000 / reps


def reset_sdpa() -> None:
    for enable in (torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.enable_cudnn_sdp,
                   torch.backends.cuda.enable_mem_efficient_sdp):
        enable(True)


def unet_variant(folder: str, name: str, rows: tuple[int, ...],
                 profile: bool = False) -> tuple[UNet, dict]:
    reset_sdpa()
    accel = Acceleration(channels_last=CUDA, cuda_graphs=CUDA, graph_buckets=rows,
                         compile_cache_dir="/tmp/inductor-cache", **VARIANTS[name])
    t0 = time.perf_counter()
    unet = UNet(folder, str(DEV), DTYPE, accel=accel)
    out = {"variant": name, "start_s": time.perf_counter() - t0}
    sample, hidden_shape = graph_shapes(Path(folder), unet.model.config)
    hidden = torch.randn(1, *hidden_shape, device=DEV, dtype=DTYPE)
    for b in rows:
        x = torch.randn(b, *sample, device=DEV, dtype=DTYPE)
        t = torch.full((b,), 500.0, device=DEV)
        h = hidden.expand(b, -1, -1).contiguous()
        out[f"unet_ms_{b}"] = gpu_ms(lambda x=x, t=t, h=h: unet(x, t, h))
    if profile and CUDA:  # the largest bucket, un-graphed (the same compiled kernels)
        with torch.inference_mode():
            out["profile"] = kernel_profile(lambda x=x, t=t, h=h: unet._run(x, t, h))
        print_profile(f"{name}, {rows[-1]} rows", out["profile"])
    return unet, out


def loop_rows(folder: str, unet: UNet) -> dict:
    info = PipelineInfo.from_folder(folder)
    schedulers = SchedulerFactory.from_folder(folder)
    text = TextEncoder(folder, str(DEV), DTYPE)
    loop = SDLoop(load_tokenizer(folder), schedulers, info, text, unet, lambda x: x, device=DEV)
    out = {"text_encoder_ms": wall_ms(lambda: text(loop.tokenize(["a photo of a cat"])))}
    size = info.default_size[0]
    for n in (1, 8):
        for where in ("host", "device"):
            jobs = [loop.job(SDRequest(f"prompt {k}", "blurry", 50, 7.5, k, size, size, "ddim"))
                    for k in range(n)]
            loop.begin(jobs)
            if where == "device":  # diffusers' pipeline: the scheduler's timesteps on the GPU
                for j in jobs:
                    j.timesteps = j.timesteps.to(DEV)

            def step(jobs=jobs):
                for j in jobs:
                    j.index = 10
                loop.step(jobs)

            out[f"iteration_ms_{n}_{where}"] = wall_ms(step)
    return out


def vae_rows(folder: str) -> dict:
    out = {}
    info = PipelineInfo.from_folder(folder)
    for compiled in (False, True) if CUDA else (False,):
        accel = Acceleration(channels_last=CUDA, compile_vae=compiled,
                             compile_cache_dir="/tmp/inductor-cache")
        t0 = time.perf_counter()
        vae = VaeDecoder(folder, str(DEV), DTYPE, accel=accel)
        z = torch.randn(1, info.latent_channels, *info.sample_size, device=DEV, dtype=DTYPE)
        ms = wall_ms(lambda vae=vae, z=z: vae(z), reps=5)
        out[f"vae_ms_{'compiled' if compiled else 'eager'}"] = ms
        out[f"vae_start_s_{'compiled' if compiled else 'eager'}"] = time.perf_counter() - t0
        del vae
    return out


def variant_cost_s(name: str) -> float:
    """A cold variant's time on the H200, build and timings (2026-12-03: eager 7 s; `compile`
    with two buckets 147 s, ~95 + ~52 s of compiles on a cold Inductor cache)."""
    if name.startswith("eager"):
        return 30.0
    return 300.0 if "autotune" in name else 170.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--deadline", type=float, default=0.0)
    p.add_argument("--json", default="sd-variants.json")
    p.add_argument("--rows", default="2,16", help="UNet rows to graph and time")
    p.add_argument("--skip-loop", action="store_true",
                   help="only the UNet variants (no loop iteration, text encoder, VAE rows)")
    p.add_argument("--profile", action="store_true",
                   help="each variant's kernels at the largest row count, by category")
    a = p.parse_args()
    rows = tuple(int(r) for r in a.rows.split(","))
    res: dict = {"gpu": torch.cuda.get_device_name(0) if CUDA else "cpu",
                 "torch": torch.__version__, "rows": []}

    def save() -> None:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)

    names = [n for n in a.variants.split(",") if n]
    for k, name in enumerate(names):
        if a.deadline and time.time() + variant_cost_s(name) > a.deadline:
            print(f"{name}: skipped (deadline)", flush=True)
            continue
        unet, row = unet_variant(a.folder, name, rows, a.profile)
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        if k == 0 and not a.skip_loop:
            res["loop"] = loop_rows(a.folder, unet)
            print(json.dumps(res["loop"]), flush=True)
            res["vae"] = vae_rows(a.folder)
            print(json.dumps(res["vae"]), flush=True)
        save()
        del unet
        torch._dynamo.reset()
        if CUDA:
            torch.cuda.empty_cache()
    lo, vae = res.get("loop", {}), res.get("vae", {})
    print("| iteration (SDLoop.step) | 1 request | 8 requests |\n|---|---:|---:|")
    for where in ("host", "device"):
        print(f"| timesteps on the {where}, ms | {lo.get(f'iteration_ms_1_{where}', 0):.2f} | "
              f"{lo.get(f'iteration_ms_8_{where}', 0):.2f} |")
    print(f"\ntext encoder {lo.get('text_encoder_ms', 0):.2f} ms; VAE decode, one image: " +
          ", ".join(f"{k} {v:.2f}" for k, v in vae.items()) + "\n")
    print("| variant | start s | UNet ms, 2 rows | UNet ms, 16 rows |\n|---|---:|---:|---:|")
    for r in res["rows"]:
        print(f"| {r['variant']} | {r['start_s']:.1f} | {r.get('unet_ms_2', 0):.2f} | "
              f"{r.get('unet_ms_16', 0):.2f} |")


if __name__ == "__main__":
    main()
