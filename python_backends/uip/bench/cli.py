"""`uip bench MODEL`: perf_analyzer sweep through Triton beside the in-process reference."""

from __future__ import annotations

import importlib
import platform
from pathlib import Path

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
    model: str = typer.Argument(..., help=f"one of {sorted(PROFILES)}"),
    concurrency: str = typer.Option("1,2,4,8", help="comma-separated concurrency levels"),
    url: str = typer.Option("", help="gRPC host:port of a running server (default: start one)"),
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY),
    out: Path = typer.Option(PROJECT_ROOT / "benchmarks" / "results"),
    label: str = typer.Option("", help="name suffix for the result files (default: host kind)"),
    measurement_ms: int = typer.Option(3000, help="perf_analyzer measurement window"),
    device: str = typer.Option("cpu", help="device of the in-process reference"),
    ref_model_dir: Path = typer.Option(None, help="in-process reference's model folder"),
    ref_num_blocks: int = typer.Option(256, help="in-process LLM engine's KV blocks"),
    ref_max_batch_tokens: int = typer.Option(512, help="in-process LLM engine's batch tokens"),
) -> None:
    """Benchmark MODEL through Triton with perf_analyzer and in-process, in the same run."""
    from uip import artifacts
    from uip.bench.perf import run_perf
    from uip.bench.report import markdown, plot, write_csv
    from uip.launch.server import TritonServer
    from uip.repo.needed import needed

    if model not in PROFILES:
        raise typer.BadParameter(f"no benchmark profile for {model!r}; known: {sorted(PROFILES)}")
    profile = importlib.import_module(PROFILES[model])
    levels = [int(c) for c in concurrency.split(",")]
    label = label or platform.node().split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{model}-{label}"
    server = None
    if not url:
        artifacts.ensure(needed(model_repository))
        # Load only what this benchmark calls (the profile's LOAD list, or the model itself).
        load = getattr(profile, "LOAD", {}).get(model, [model])
        flags = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in load]]
        # perf_analyzer reads the model config and cannot send the admin key over gRPC
        server = TritonServer(model_repository, stem.with_suffix(".server.log"), flags,
                              open_apis=("model-config",)).start()
        url = server.grpc_url
    try:
        per_request = profile.calibrate(url, model) if hasattr(profile, "calibrate") else 1
        perf = run_perf(model, url, levels, stem.with_suffix(".perf.csv"), profile.perf_args(),
                        measurement_ms=measurement_ms)
        ttft = profile.ttft(url, model, levels) if hasattr(profile, "ttft") else None
    finally:
        if server:
            server.stop()
    ref = profile.inprocess(levels, device=device, model_dir=ref_model_dir,
                            num_blocks=ref_num_blocks, max_batch_tokens=ref_max_batch_tokens)
    rows = [result_row(p, per_request, ref[p.concurrency], ttft) for p in perf]
    write_csv(stem.with_suffix(".csv"), rows)
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    plot(stem.with_suffix(".png"), rows, "concurrency", list(rows[0])[1:3], f"{model} ({label})")
    typer.echo(table)
    typer.echo(f"wrote {stem}.csv/.md/.png")


def result_row(p, per_request: int, ref: float | dict[str, float],
               ttft: dict[int, float] | None) -> dict[str, float]:
    """One table row: Triton beside the in-process reference at one concurrency. `ref` is the
    reference's rate, or {"per_s", "ttft_ms"} for streaming profiles (then `ttft` holds
    Triton's time to first response)."""
    rate = ref["per_s"] if isinstance(ref, dict) else ref
    unit = "tok" if per_request > 1 else ""
    row = {
        "concurrency": p.concurrency,
        f"triton_{unit}per_s": p.throughput * per_request,
        f"inprocess_{unit}per_s": rate,
        "triton/inprocess": p.throughput * per_request / rate,
        "p50_ms": p.p50_ms,
        "p90_ms": p.p90_ms,
        "p99_ms": p.p99_ms,
    }
    if isinstance(ref, dict) and ttft is not None:
        row["triton_ttft_p50_ms"] = ttft[p.concurrency]
        row["inprocess_ttft_p50_ms"] = ref["ttft_ms"]
    return row


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
