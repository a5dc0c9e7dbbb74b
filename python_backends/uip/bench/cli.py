"""`uip bench MODEL` (a perf_analyzer sweep through Triton beside the in-process reference,
one sub-command per profile) and `uip bench sd` (Stable Diffusion: uip.bench.sd)."""

from __future__ import annotations

import importlib
import inspect
import platform
from pathlib import Path
from typing import Literal

import typer

from uip.core.paths import DEFAULT_REPOSITORY, PROJECT_ROOT

# model -> module with perf_args(), inprocess(concurrency, device, ...) -> {c: items/s} and,
# where one request yields many items (LLM tokens), calibrate(grpc_url, model) -> items/request
PROFILES = {
    "embedding": "uip.bench.embedding",
    "llm": "uip.bench.llm",
    "llm_bls": "uip.bench.llm",
}


def bench(
    model: str,
    concurrency: str = typer.Option("1,2,4,8", help="comma-separated concurrency levels"),
    url: str = typer.Option("", help="gRPC host:port of a running server (default: start one)"),
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY),
    out: Path = typer.Option(PROJECT_ROOT / "benchmarks" / "results"),
    label: str = typer.Option("", help="name suffix for the result files (default: host kind)"),
    measurement_ms: int = typer.Option(3000, help="perf_analyzer measurement window"),
    device: str = typer.Option("cpu", help="device of the in-process reference"),
    ref_model_dir: Path = typer.Option(None, help="in-process reference's model folder"),
    ref_num_blocks: int = typer.Option(None, help="in-process LLM engine's KV blocks "
                                       "(default: llm_engine's spec in the repository)"),
    ref_max_batch_tokens: int = typer.Option(None, help="in-process LLM engine's batch tokens "
                                             "(default: llm_engine's spec)"),
    prompt_tokens: int = typer.Option(0, help="LLM: prompts of about N tokens (0: one fixed "
                                      "short prompt)"),
    distinct_prompts: int = typer.Option(64, help="LLM, with --prompt-tokens: how many "
                                         "different prompts (perf_analyzer cycles them)"),
) -> None:
    """Benchmark MODEL through Triton with perf_analyzer and in-process, in the same run.

    `uip bench MODEL` for each MODEL of PROFILES (see profile_command)."""
    from uip import artifacts
    from uip.bench.perf import run_perf
    from uip.bench.report import markdown, plot, write_csv
    from uip.launch.server import TritonServer
    from uip.repo.needed import needed

    profile = importlib.import_module(PROFILES[model])
    levels = parse_levels(concurrency)
    label = label or platform.node().split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{model}-{label}"
    server = None
    if not url:
        artifacts.ensure(needed(model_repository))
        # Load only what this benchmark calls (the profile's LOAD list, or the model itself),
        # of what the repository has (llm_bls with `engine_transport: local` has no llm_engine)
        load = [m for m in getattr(profile, "LOAD", {}).get(model, [model])
                if m == model or (model_repository / m).is_dir()]
        flags = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in load]]
        # perf_analyzer reads the model config and the statistics and cannot send the admin
        # key over gRPC
        server = TritonServer(model_repository, stem.with_suffix(".server.log"), flags,
                              open_apis=("model-config", "statistics")).start()
        url = server.grpc_url
    texts = (profile.prompts(prompt_tokens, distinct_prompts, ref_model_dir, model_repository)
             if hasattr(profile, "prompts") else None)
    try:
        per_request = (profile.calibrate(url, model, texts=texts)
                       if hasattr(profile, "calibrate") else 1)
        perf = run_perf(model, url, levels, stem.with_suffix(".perf.csv"),
                        profile.perf_args(texts=texts), measurement_ms=measurement_ms)
        ttft = profile.ttft(url, model, levels, texts=texts) if hasattr(profile, "ttft") else None
    finally:
        if server:
            server.stop()
    ref = profile.inprocess(levels, device=device, model_dir=ref_model_dir,
                            num_blocks=ref_num_blocks, max_batch_tokens=ref_max_batch_tokens,
                            prompt_tokens=prompt_tokens, model_repository=model_repository,
                            texts=texts)
    rows = [result_row(p, per_request, ref[p.concurrency], ttft) for p in perf]
    write_csv(stem.with_suffix(".csv"), rows)
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    plot(stem.with_suffix(".png"), rows, "concurrency", list(rows[0])[1:3], f"{model} ({label})")
    typer.echo(table)
    typer.echo(f"wrote {stem}.csv/.md/.png")


def result_row(p, per_request: float, ref: float | dict[str, float],
               ttft: dict[int, float] | None) -> dict[str, float]:
    """One table row: Triton beside the in-process reference at one concurrency. `ref` is the
    reference's rate, or {"per_s", "ttft_ms"} for streaming profiles (then `ttft` holds
    Triton's time to first response)."""
    rate = ref["per_s"] if isinstance(ref, dict) else ref
    unit = "tok" if per_request != 1 else ""
    row = {
        "concurrency": p.concurrency,
        f"triton_{unit}per_s": p.throughput * per_request,
        f"inprocess_{unit}per_s": rate,
        "triton/inprocess": p.throughput * per_request / rate,
        # Triton's own count over perf_analyzer's windows, beside perf_analyzer's
        f"triton_server_{unit}per_s": (float("nan") if p.server_throughput is None
                                       else p.server_throughput * per_request),
        "p50_ms": p.p50_ms,
        "p90_ms": p.p90_ms,
        "p99_ms": p.p99_ms,
    }
    if isinstance(ref, dict) and ttft is not None:
        row["triton_ttft_p50_ms"] = ttft[p.concurrency]
        row["inprocess_ttft_p50_ms"] = ref["ttft_ms"]
    return row


def parse_levels(concurrency: str) -> list[int]:
    """--concurrency "1,2,4,8" -> [1, 2, 4, 8]."""
    return [int(c) for c in concurrency.split(",")]


def bench_sd(
    config: Literal["tiny", "sd15", "sdxl-tiny", "sdxl"] = typer.Option(
        "tiny", help="tiny (artifacts/sd-tiny), sd15 (SD 1.5-shaped random weights), sdxl-tiny "
        "(artifacts/sdxl-tiny) or sdxl (SDXL base-shaped random weights): sdxl* are served by "
        "stable_diffusion_xl (specs/optional)"),
    artifact: Path = typer.Option(None, help="any diffusers SD folder instead"),
    device: Literal["cpu", "cuda"] = typer.Option("cpu"),
    dtype: Literal["float32", "float16", "bfloat16"] = typer.Option(
        None, help="default: float32 on CPU, float16 on CUDA"),
    steps: int = typer.Option(50),
    size: int = typer.Option(None, help="default: 64 (tiny), 512 (sd15), 1024 (sdxl)"),
    guidance: float = typer.Option(7.5),
    scheduler: str = typer.Option("ddim"),
    concurrency: str = typer.Option("1,2,4,8", help="comma-separated concurrency levels"),
    requests_per_level: int = typer.Option(8, help="requests per concurrency level (at least "
                                           "--rounds rounds of C)"),
    rounds: int = typer.Option(2),
    repeat: int = typer.Option(1, help="run each level N times and keep the best (for noisy, "
                               "shared hosts)"),
    orchestrators: int = typer.Option(None, help="stable_diffusion instances (default: the "
                                      "spec's count; one instance batches the steps itself)"),
    unet_queue_delay_us: int = typer.Option(None, help="override sd_unet's dynamic batching "
                                            "max_queue_delay_us"),
    placement: str = typer.Option(None, help="separate (BLS to the sd_* models) or colocated "
                                  "(default: the spec's)"),
    max_batch: int = typer.Option(None, help="requests stepped together (default: the spec's)"),
    sd_param: list[str] = typer.Option([], help="another stable_diffusion spec parameter, "
                                       "KEY=VALUE (repeatable), e.g. compile=true"),
    server_arg: list[str] = typer.Option([], help="extra tritonserver flag, e.g. --server-arg="
                                         "--cuda-memory-pool-byte-size=0:268435456 "
                                         "(repeatable)"),
    url: str = typer.Option(None, help="a running server's gRPC host:port (default: start "
                            "one)"),
    skip_diffusers: bool = typer.Option(False, "--skip-diffusers"),
    skip_triton: bool = typer.Option(False, "--skip-triton"),
    out: Path = typer.Option(None, help="also write the table here"),
) -> None:
    """Stable Diffusion through Triton beside diffusers' pipeline in-process, in the same run.

    Per concurrency C: Triton gets C gRPC client threads, diffusers one call with C prompts."""
    from uip.bench import sd

    sd.run(sd.Settings(
        config=config, artifact=artifact, device=device, dtype=dtype, steps=steps, size=size,
        guidance=guidance, scheduler=scheduler, concurrency=parse_levels(concurrency),
        requests_per_level=requests_per_level, rounds=rounds, repeat=repeat,
        orchestrators=orchestrators, unet_queue_delay_us=unet_queue_delay_us,
        placement=placement, max_batch=max_batch, sd_param=list(sd_param),
        server_arg=list(server_arg), url=url,
        skip_diffusers=skip_diffusers, skip_triton=skip_triton, out=out))


def bench_gateway(
    concurrency: str = typer.Option("1,8,32", help="comma-separated concurrency levels"),
    url: str = typer.Option("", help="gRPC host:port of a running server (default: start one)"),
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY),
    out: Path = typer.Option(PROJECT_ROOT / "benchmarks" / "results"),
    label: str = typer.Option("", help="name suffix for the result files (default: host kind)"),
    rounds: int = typer.Option(2, min=1, help="rounds per level; the paths alternate in each"),
    requests: int = typer.Option(3, min=1, help="requests each stream makes per round"),
    max_tokens: int = typer.Option(64, min=1, help="output tokens per request (greedy)"),
    cpus: str = typer.Option("", help="pin SERVER:GATEWAY:CLIENT to CPU lists "
                             "(e.g. 0-11:12-13:14-15), or 'auto' (8+ cores)"),
    gateway_workers: int = typer.Option(None, min=1, help="the gateway's worker processes "
                                        "(default: one per core of its --cpus list, else 1)"),
) -> None:
    """Chat streaming through the OpenAI gateway vs llm_bls over gRPC directly, same run."""
    from uip.bench.gateway_run import run_gateway_bench

    run_gateway_bench(concurrency, url, model_repository, out, label, rounds, requests,
                      max_tokens, cpus, gateway_workers)


def profile_command(model: str):
    """`uip bench MODEL` for one profile: bench's options, with MODEL fixed."""

    def command(**options) -> None:
        bench(model, **options)

    signature = inspect.signature(bench, eval_str=True)
    command.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != "model"])
    command.__doc__ = bench.__doc__.split("\n")[0].replace("MODEL", model)
    return command


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="Benchmark a model through Triton beside its in-process "
                            "reference, in the same run.", no_args_is_help=True)
    for model in PROFILES:
        bench_app.command(model)(profile_command(model))
    bench_app.command("sd")(bench_sd)
    bench_app.command("gateway")(bench_gateway)
    from uip.bench.transfer import bench_transfer

    bench_app.command("transfer")(bench_transfer)
    from uip.bench.memory import bench_memory

    bench_app.command("memory")(bench_memory)
    app.add_typer(bench_app, name="bench")
