"""`uip bench MODEL`: perf_analyzer sweep through Triton beside the in-process reference."""

from __future__ import annotations

import importlib
import platform
from pathlib import Path

import typer

from uip.paths import DEFAULT_REPOSITORY, PROJECT_ROOT

# model -> module with PERF_ARGS and inprocess(concurrency) -> {c: items/s}
PROFILES = {"embedding": "uip.bench.embedding"}


def bench(
    model: str = typer.Argument(..., help=f"one of {sorted(PROFILES)}"),
    concurrency: str = typer.Option("1,2,4,8", help="comma-separated concurrency levels"),
    url: str = typer.Option("", help="gRPC host:port of a running server (default: start one)"),
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY),
    out: Path = typer.Option(PROJECT_ROOT / "benchmarks" / "results"),
    label: str = typer.Option("", help="name suffix for the result files (default: host kind)"),
    measurement_ms: int = typer.Option(3000, help="perf_analyzer measurement window"),
    device: str = typer.Option("cpu", help="device of the in-process reference"),
) -> None:
    """Benchmark MODEL through Triton with perf_analyzer and in-process, in the same run."""
    from uip import artifacts
    from uip.artifacts.needed import needed
    from uip.bench.perf import run_perf
    from uip.bench.report import markdown, plot, write_csv
    from uip.server import TritonServer

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
        server = TritonServer(model_repository, stem.with_suffix(".server.log")).start()
        url = server.grpc_url
    try:
        perf = run_perf(model, url, levels, stem.with_suffix(".perf.csv"), profile.PERF_ARGS,
                        measurement_ms=measurement_ms)
    finally:
        if server:
            server.stop()
    ref = profile.inprocess(levels, device=device)
    rows = [{
        "concurrency": p.concurrency,
        "triton_per_s": p.throughput,
        "inprocess_per_s": ref[p.concurrency],
        "triton/inprocess": p.throughput / ref[p.concurrency],
        "p50_ms": p.p50_ms,
        "p90_ms": p.p90_ms,
        "p99_ms": p.p99_ms,
    } for p in perf]
    write_csv(stem.with_suffix(".csv"), rows)
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    plot(stem.with_suffix(".png"), rows, "concurrency", ["triton_per_s", "inprocess_per_s"],
         f"{model} ({label})")
    typer.echo(table)
    typer.echo(f"wrote {stem}.csv/.md/.png")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
