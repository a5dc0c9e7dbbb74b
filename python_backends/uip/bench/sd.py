"""`uip bench sd`: Triton (`stable_diffusion` or `stable_diffusion_xl` over gRPC) beside
diffusers' StableDiffusion(XL)Pipeline in-process, on the same folder, in the same run.

  # CPU, the tiny model (starts its own tritonserver on a repository rendered from the spec):
  uip bench sd --out benchmarks/results/sd_cpu.md
  # GPU (H200): SD 1.5-shaped UNet/VAE/CLIP with random fp16 weights, 512x512, 50 steps
  # (builds artifacts/sd15-random, ~2 GB, on first use; one orchestrator batching the steps):
  uip bench sd --config sd15 --device cuda --placement colocated \
      --out benchmarks/results/sd15-h200.md
  # SDXL (stable_diffusion_xl, its optional spec; co-located): the tiny SDXL folder on CPU,
  # or SDXL base-shaped random fp16 weights at 1024x1024 on a GPU (artifacts/sdxl-random, ~7 GB):
  uip bench sd --config sdxl-tiny --steps 10 --concurrency 1,4
  uip bench sd --config sdxl --device cuda --steps 30 --guidance 5 --scheduler euler \
      --out benchmarks/results/sdxl-h200.md
  # against a server that is already running (no server start):
  uip bench sd --url localhost:8001 --skip-diffusers

Triton: per concurrency level C, C client threads (one gRPC client each) send requests back to
back; images/s = requests / wall time; latency = per request, seen by the client. The
orchestrator's own counters (`uip_sd_unet_calls_total`, `uip_sd_unet_rows_total` on the metrics
port: the server's own, or port 8002 of `--url`'s host) give the mean number of requests merged
into one UNet call, whatever the placement; sd_unet's statistics (separate placement) its
compute and queue time per step.
diffusers: one pipeline object; "concurrency" C = one call with C prompts (its batch), the way
diffusers users get throughput; latency = that call's time.

The command's options are in uip.bench.cli (`bench_sd`); they arrive here as `Settings`.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uip.clients.sd import infer_inputs
from uip.core.paths import DEFAULT_SPECS, artifacts_root

FLOAT_TENSORS = {"last_hidden_state", "sample", "encoder_hidden_states", "noise_pred",
                 "latents"}
PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low resolution"


@dataclass
class Settings:
    """`uip bench sd`'s options (their help: uip.bench.cli.bench_sd); dtype, size and
    orchestrators left as None get their device/config default."""

    config: str
    artifact: Path | None
    device: str
    dtype: str | None
    steps: int
    size: int | None
    guidance: float
    scheduler: str
    concurrency: list[int]
    requests_per_level: int
    rounds: int
    repeat: int
    orchestrators: int | None
    unet_queue_delay_us: int | None
    placement: str | None
    max_batch: int | None
    sd_param: list[str]
    server_arg: list[str]
    url: str | None
    skip_diffusers: bool
    skip_triton: bool
    out: Path | None
    # seed 0, served alone / the pipeline's: compared above the table
    triton_image: np.ndarray | None = None
    diffusers_image: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.dtype = self.dtype or ("float16" if self.device == "cuda" else "float32")
        self.size = self.size or {"sd15": 512, "sdxl": 1024}.get(self.config, 64)
        self.orchestrators = self.orchestrators or spec_instances(self.spec_file)
        if self.xl and self.placement not in (None, "colocated"):
            raise ValueError("stable_diffusion_xl has only the colocated placement")

    @property
    def xl(self) -> bool:
        """An SDXL config: served by stable_diffusion_xl (specs/optional), co-located."""
        return self.config.startswith("sdxl")

    @property
    def model(self) -> str:
        return "stable_diffusion_xl" if self.xl else "stable_diffusion"

    @property
    def spec_file(self) -> Path:
        if self.xl:
            return DEFAULT_SPECS / "optional" / "stable_diffusion_xl.yaml"
        return DEFAULT_SPECS / "stable_diffusion.yaml"


def artifact_for(args) -> Path:
    from uip import artifacts
    from uip.artifacts import sd_tiny, sdxl_tiny

    if args.artifact:
        return Path(args.artifact).resolve()
    if args.config in ("tiny", "sdxl-tiny"):
        name = "sd-tiny" if args.config == "tiny" else "sdxl-tiny"
        artifacts.ensure([name])
        return artifacts_root() / name
    name, build = {"sd15": ("sd15-random", sd_tiny.build),
                   "sdxl": ("sdxl-random", sdxl_tiny.build)}[args.config]
    dest = artifacts_root() / name
    if not dest.exists():
        print(f"building {dest} ({args.config} shapes, random {args.dtype} weights) ...",
              flush=True)
        with tempfile.TemporaryDirectory(dir=artifacts_root(), prefix=f".{name}-") as tmp:
            work = Path(tmp) / name
            build(work, config=args.config, dtype=args.dtype)
            work.rename(dest)
    return dest


def spec_instances(spec_file: Path = DEFAULT_SPECS / "stable_diffusion.yaml") -> int:
    from uip.spec.schema import load_spec

    return load_spec(spec_file).models[0].instances[0].count  # the orchestrator comes first


def render_repository(args, folder: Path, out: Path) -> None:
    """The stable_diffusion(_xl) spec, adapted: artifact, orchestrator count, GPU + dtype."""
    from uip.repo.render import build_repository
    from uip.spec.schema import DeploymentSpec, load_spec

    data = copy.deepcopy(load_spec(args.spec_file).model_dump())
    wire = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}[args.dtype]
    if args.placement == "colocated":  # the networks live in stable_diffusion's process
        data["models"] = [m for m in data["models"] if m["name"] == args.model]
    for m in data["models"]:
        if m.get("artifact"):
            m["artifact"] = {"path": str(folder), "sha256": {}}
        if m["name"] == args.model:
            m["instances"][0]["count"] = args.orchestrators
            if args.placement:
                m["parameters"]["placement"] = args.placement
            if args.max_batch:
                m["parameters"]["max_batch"] = args.max_batch
            for kv in args.sd_param:  # e.g. compile=true (see uip.triton.models.stable_diffusion)
                key, _, value = kv.partition("=")
                m["parameters"][key] = value
        if m["name"] == "sd_unet" and args.unet_queue_delay_us is not None:
            m["batching"]["dynamic"]["max_queue_delay_us"] = args.unet_queue_delay_us
        if args.device == "cuda":
            for g in m["instances"]:
                g["kind"] = "gpu"
        m["parameters"]["dtype"] = args.dtype
        for t in m["inputs"] + m["outputs"]:
            if t["name"] in FLOAT_TENSORS:
                t["dtype"] = wire
    build_repository([DeploymentSpec.model_validate(data)], out)


def start_server(args, repo: Path, tmp: Path):
    """tritonserver on `repo`; retried, since 2.51's Python backend now and then aborts while
    many stubs start at once on a busy host (boost::interprocess::lock_exception)."""
    from uip.launch.server import TritonServer

    for attempt in range(1, 4):
        srv = TritonServer(repo, tmp / f"server-{attempt}.log",
                           extra=["--log-verbose=0", *args.server_arg])
        print(f"starting tritonserver on {repo} ...", flush=True)
        try:
            return srv.start()
        except Exception as exc:  # noqa: BLE001 - reported, then retried
            srv.stop()
            print(f"tritonserver failed to start (attempt {attempt}): {exc}\n"
                  + "\n".join(srv.log().splitlines()[-20:]), file=sys.stderr)
    raise RuntimeError("tritonserver did not start in 3 attempts")


def options(args, seed: int) -> dict:
    return dict(negative_prompt=NEGATIVE, steps=args.steps, guidance_scale=args.guidance,
                seed=seed, height=args.size, width=args.size, scheduler=args.scheduler)


def unet_stats(client, headers: dict[str, str] | None = None) -> tuple[int, int, int, int]:
    """sd_unet's executions, inferences, and nanoseconds queued / computing (all requests);
    `headers`: the admin key's gRPC metadata (statistics is a restricted API)."""
    from tritonclient.utils import InferenceServerException

    try:
        s = client.get_inference_statistics("sd_unet", headers=headers).model_stats[0]
    except InferenceServerException:  # co-located: no sd_unet model
        return 0, 0, 0, 0
    st = s.inference_stats
    return (s.execution_count, s.inference_count, st.queue.ns,
            st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns)


def loop_totals(metrics_url: str, model: str) -> tuple[float, float]:
    """The orchestrator's UNet calls and rows so far; (0, 0) when its metrics are not there."""
    from uip.clients import metrics

    try:
        text = metrics.fetch(metrics_url, timeout=5)
    except OSError:
        return 0.0, 0.0
    return (metrics.total(text, "uip_sd_unet_calls_total", model=model),
            metrics.total(text, "uip_sd_unet_rows_total", model=model))


def run_level(args, url: str, c: int, total: int) -> tuple[list[float], float]:
    """`total` requests from `c` client threads sending back to back: latencies, wall time."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker():
        client = grpcclient.InferenceServerClient(url)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            inputs = infer_inputs(grpcclient, PROMPT, **options(args, i))
            t0 = time.perf_counter()
            client.infer(args.model, inputs, client_timeout=3600)
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(c)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def triton_level(args, url: str, admin, c: int, headers: dict[str, str],
                 metrics_url: str) -> dict:
    total = max(args.requests_per_level, c * args.rounds)
    e0, l0 = unet_stats(admin, headers), loop_totals(metrics_url, args.model)
    latencies, wall = run_level(args, url, c, total)
    e1 = unet_stats(admin, headers)
    l1 = loop_totals(metrics_url, args.model)  # counters follow within 0.1 s
    for _ in range(20):
        if l1[1] - l0[1] >= total * args.steps:
            break
        time.sleep(0.05)
        l1 = loop_totals(metrics_url, args.model)
    infs = e1[1] - e0[1]
    calls, rows = l1[0] - l0[0], l1[1] - l0[1]
    per_req = 2 if args.guidance > 1 else 1
    requests = infs / per_req  # UNet requests (one per loop step)
    queue_ms = (e1[2] - e0[2]) / max(requests, 1) / 1e6
    # compute time is counted per request: a batch of k requests adds its time k times
    compute_ms = (e1[3] - e0[3]) / max(requests, 1) / 1e6
    return dict(engine=f"Triton {args.model} (gRPC)", c=c, n=total,
                lat=statistics.mean(latencies), p50=statistics.median(latencies),
                ips=total / wall, merged=(rows / calls / per_req) if calls else 0.0,
                unet=f"{compute_ms:.1f} / {queue_ms:.1f}")


def bench_triton(args, url: str, admin_key: str | None = None,
                 metrics_url: str | None = None) -> list[dict]:
    import tritonclient.grpc as grpcclient

    from uip.launch.admin import KEY_ENV, headers

    admin = grpcclient.InferenceServerClient(url)
    hdrs = headers(admin_key or os.environ.get(KEY_ENV), "grpc")
    rows = []
    # warm-up: every orchestrator instance and the models' first calls
    warm = [threading.Thread(target=lambda i=i: grpcclient.InferenceServerClient(url).infer(
        args.model, infer_inputs(grpcclient, PROMPT, **options(args, i))))
        for i in range(args.orchestrators)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    for c in args.concurrency:
        best = None
        for _ in range(args.repeat):  # best of N: a busy shared machine only ever slows a run
            row = triton_level(args, url, admin, c, hdrs, metrics_url
                               or f"http://{url.rsplit(':', 1)[0]}:8002/metrics")
            if best is None or row["ips"] > best["ips"]:
                best = row
        rows.append(best)
        print(f"  triton   c={c}: {best['ips']:.2f} img/s, latency {best['lat']:.3f} s, "
              f"{best['merged']:.2f} requests per UNet call, UNet ms compute / queued per step "
              f"{best['unet']}", flush=True)
    # one request alone, to compare with diffusers' image for the same inputs
    args.triton_image = admin.infer(args.model, infer_inputs(
        grpcclient, PROMPT, **options(args, 0)), client_timeout=3600).as_numpy("image")[0]
    return rows


def bench_diffusers(args, folder: Path) -> list[dict]:
    import torch

    from uip.bench.sd_reference import DiffusersReference, DiffusersXLReference
    from uip.sd.models import torch_dtype

    cls = DiffusersXLReference if args.xl else DiffusersReference
    ref = cls(folder, device=args.device, dtype=torch_dtype(args.dtype))
    rows = []

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    args.diffusers_image = ref.images([PROMPT], **options(args, 0))[0]  # also the warm-up
    for c in args.concurrency:
        rounds = max(1, args.requests_per_level // c, args.rounds)
        best = None
        for _ in range(args.repeat):  # best of N, as for Triton
            times = []
            for r in range(rounds):
                sync()
                t0 = time.perf_counter()
                ref.images([PROMPT] * c, **options(args, r))
                sync()
                times.append(time.perf_counter() - t0)
            row = dict(engine="diffusers in-process (batch = C)", c=c, n=c * rounds,
                       lat=statistics.mean(times), p50=statistics.median(times),
                       ips=c * rounds / sum(times), merged=float("nan"), unet="")
            if best is None or row["ips"] > best["ips"]:
                best = row
        rows.append(best)
        print(f"  diffusers c={c}: {rows[-1]['ips']:.2f} img/s, latency "
              f"{rows[-1]['lat']:.3f} s", flush=True)
    return rows


def compare(args) -> str:
    a, b = args.triton_image, args.diffusers_image
    if a is None or b is None:
        return ""
    if a.shape != b.shape:
        return f"Image check: shapes differ, Triton {a.shape} vs diffusers {b.shape}."
    diff = int(abs(a.astype(int) - b.astype(int)).max())
    same = "identical" if diff == 0 else f"max difference {diff}/255 per pixel"
    return f"Image check (seed 0, served alone): Triton vs diffusers {same}."


def table(args, rows: list[dict], folder: Path) -> str:
    import torch

    dev = (torch.cuda.get_device_name(0) if args.device == "cuda"
           else f"CPU, {torch.get_num_threads()} torch threads")
    head = [
        f"Stable Diffusion benchmark, {dt.datetime.now():%Y-%m-%d %H:%M}: {dev}; "
        f"model `{folder.name}` ({args.config}, {args.dtype}); {args.size}x{args.size}, "
        f"{args.steps} steps, scheduler {args.scheduler}, CFG {args.guidance}; "
        f"{args.orchestrators} orchestrator instance(s), placement "
        f"{args.placement or 'spec'}, max_batch {args.max_batch or 'spec'}"
        f"{', ' + ' '.join(args.sd_param) if args.sd_param else ''}; best of {args.repeat} "
        f"per level; "
        f"torch {torch.__version__}, "
        f"Python {platform.python_version()}.",
        "",
        *([compare(args), ""] if compare(args) else []),
        "| engine | concurrency C | requests | latency mean (s) | latency p50 (s) | images/s "
        "| requests per UNet call | sd_unet ms per step: compute / queued |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        merged = "" if r["merged"] != r["merged"] else f"{r['merged']:.2f}"
        head.append(f"| {r['engine']} | {r['c']} | {r['n']} | {r['lat']:.3f} | {r['p50']:.3f} "
                    f"| {r['ips']:.2f} | {merged} | {r['unet']} |")
    return "\n".join(head) + "\n"


def run(args: Settings) -> str:
    """The benchmark: Triton's rows, then diffusers' rows; prints the table, writes `out`."""
    folder = artifact_for(args)
    rows: list[dict] = []
    if not args.skip_triton:
        rows += bench_triton(args, args.url) if args.url else bench_own_server(args, folder)
    if not args.skip_diffusers:
        rows += bench_diffusers(args, folder)
    text = table(args, rows, folder)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


def bench_own_server(args: Settings, folder: Path) -> list[dict]:
    """bench_triton on a tritonserver of our own, on the spec rendered for `folder`."""
    with tempfile.TemporaryDirectory(prefix="uip-bench-sd-") as tmp:
        repo = Path(tmp) / "repository"
        render_repository(args, folder, repo)
        srv = start_server(args, repo, Path(tmp))
        try:
            states = srv.wait_models()
            if any(v != "READY" for v in states.values()):
                raise RuntimeError(f"models not ready: {states}")
            rows = bench_triton(args, srv.grpc_url, srv.admin_key, srv.metrics_url)
            for line in srv.log().splitlines():  # start-up timings (CUDA graph capture)
                if line.startswith("uip.sd: "):
                    print(line, flush=True)
            return rows
        except Exception:
            print("tritonserver log (last 80 lines):\n"
                  + "\n".join(srv.log().splitlines()[-80:]), file=sys.stderr)
            raise
        finally:
            srv.stop()
