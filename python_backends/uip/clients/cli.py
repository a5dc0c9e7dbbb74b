"""`uip generate` (LLM, streaming over gRPC or SSE) and `uip txt2img` (Stable Diffusion)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import typer


def generate(
    prompt: str = typer.Argument(..., help="text_input"),
    model: str = typer.Option("llm_bls", help="llm (ensemble) or llm_bls (orchestrator)"),
    protocol: str = typer.Option("grpc", help="grpc or sse (stream deltas), http (one response)"),
    url: str = typer.Option("", help="host:port (default localhost:8001 gRPC, :8000 HTTP)"),
    max_tokens: int = typer.Option(None),
    temperature: float = typer.Option(None),
    top_p: float = typer.Option(None),
    top_k: int = typer.Option(None),
    seed: int = typer.Option(None),
    stop: list[str] = typer.Option(None, help="stop string (repeatable)"),
    lora: str = typer.Option(None, help="a LoRA adapter under llm_engine's lora_dir"),
) -> None:
    """Generate text; deltas are printed as they arrive."""
    import uuid

    from uip.clients.llm import GenerateError
    from uip.clients.llm import generate as run

    url = url or ("localhost:8001" if protocol == "grpc" else "localhost:8000")
    params = {k: v for k, v in dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                    top_k=top_k, seed=seed, stop_words=stop or None,
                                    lora_name=lora).items()
              if v is not None}
    if protocol != "http":
        params["request_id"] = uuid.uuid4().hex  # the `llm` ensemble keys streams by request id

    def show(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    try:
        gen = run(protocol, url, model, prompt, on_delta=show, **params)
    except GenerateError as e:
        typer.echo(f"\nuip generate: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"\n[finish_reason={gen.finish_reason}]", err=True)


def txt2img(
    prompt: str = typer.Argument(..., help="the prompt"),
    output: Path = typer.Option(Path("txt2img.png"), "-o", "--output", help="PNG to write"),
    negative: str = typer.Option(None, help="negative prompt"),
    steps: int = typer.Option(None),
    guidance: float = typer.Option(None, help="classifier-free guidance scale"),
    seed: int = typer.Option(None),
    height: int = typer.Option(None),
    width: int = typer.Option(None),
    scheduler: str = typer.Option(None, help="a name of uip.sd.schedulers.SCHEDULERS (ddim, "
                                  "euler, ...; a wrong one lists them)"),
    protocol: Literal["grpc", "http"] = typer.Option("grpc"),
    url: str = typer.Option(None, help="host:port (default: localhost:8001 for gRPC, "
                            "localhost:8000 for HTTP)"),
    model: str = typer.Option("stable_diffusion"),
    timeout: float = typer.Option(600.0, help="seconds"),
) -> None:
    """Text to image through the `stable_diffusion` model; writes a PNG.

    Options left out are not sent: the server's defaults apply (seed 0, 50 steps, CFG 7.5).

    Left out, --scheduler, --height and --width are the artifact's own.

    Exit status 2 on a refused request; the message says why."""
    from tritonclient.utils import InferenceServerException

    from uip.clients.sd import txt2img as run

    if scheduler is not None:
        check_scheduler(scheduler)
    try:
        image, elapsed = run(prompt, output, protocol=protocol, url=url, model=model,
                             timeout=timeout, negative_prompt=negative, steps=steps,
                             guidance_scale=guidance, seed=seed, height=height, width=width,
                             scheduler=scheduler)
    except InferenceServerException as exc:
        typer.echo(f"error: {exc.message()}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {output} ({image.shape[1]}x{image.shape[0]}) in {elapsed:.2f} s")


def check_scheduler(name: str) -> None:
    """--scheduler must name one of uip.sd.schedulers.SCHEDULERS. Checked here, not as a choice
    type: that module imports torch and diffusers (~3 s), which every `uip` command would then
    wait for, since typer builds all commands at start."""
    from uip.sd.schedulers import SCHEDULERS

    if name not in SCHEDULERS:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(map(repr, SCHEDULERS))}.",
                                 param_hint="'--scheduler'")


def soak(
    streams: int = typer.Option(256, help="concurrent LLM gRPC streams"),
    minutes: float = typer.Option(10.0, help="how long"),
    cancel_fraction: float = typer.Option(0.5, help="share of streams cancelled at random"),
    max_tokens: int = typer.Option(64, help="max_tokens is drawn from 1..this"),
    sd_clients: int = typer.Option(1), embedding_clients: int = typer.Option(2),
    model: str = typer.Option("llm_bls", help="llm_bls (cancels reach the engine) or llm"),
    url: str = typer.Option("", help="gRPC host:port of a running server (default: start "
                            "one on the default repository; stub RSS and log checked then)"),
    metrics_url: str = typer.Option("http://localhost:8002/metrics", help="with --url"),
    report: Path = typer.Option(None, help="write the JSON report here"),
) -> None:
    """Soak: LLM streams (half cancelled) + SD + embedding; exit 1 when a check fails."""
    from uip.clients.soak import SoakConfig, run_soak
    from uip.core.paths import DEFAULT_REPOSITORY

    server = None
    if not url:
        import tempfile

        from uip import artifacts
        from uip.launch.server import TritonServer
        from uip.repo.needed import needed

        artifacts.ensure(needed(DEFAULT_REPOSITORY))
        log = Path(tempfile.mkdtemp(prefix="uip-soak-")) / "server.log"
        typer.echo(f"starting tritonserver (log {log}) ...", err=True)
        server = TritonServer(DEFAULT_REPOSITORY, log, ["--log-verbose=0"]).start()
        server.wait_models()
        url, metrics_url = server.grpc_url, server.metrics_url
    cfg = SoakConfig(grpc_url=url, metrics_url=metrics_url, streams=streams,
                     seconds=minutes * 60, cancel_fraction=cancel_fraction, max_tokens=max_tokens,
                     sd_clients=sd_clients, embedding_clients=embedding_clients, model=model,
                     server_pid=server.proc.pid if server else None,
                     log_path=server.log_path if server else None)
    try:
        rep = run_soak(cfg, progress=lambda m: typer.echo(m, err=True))
    finally:
        if server is not None:
            server.stop()
    text = rep.to_json()
    if report:
        report.write_text(text)
    typer.echo(text)
    typer.echo("soak: OK" if rep.ok else "soak: FAILED: " + "; ".join(rep.problems), err=True)
    raise typer.Exit(0 if rep.ok else 1)


def fuzz(
    url: str = typer.Option("localhost:8000", help="HTTP host:port of a running server"),
    cases_per_field: int = typer.Option(0, help="mutations per request field (0: all)"),
    models: str = typer.Option("embedding,llm,llm_bls,stable_diffusion,llm_engine",
                               help="models whose /v2 routes are fuzzed"),
) -> None:
    """HTTP fuzz of the /v2 routes (boofuzz: method, path, version, headers, body); exit 1
    when the server is not healthy afterwards or a 5xx answer is not Triton's own frontend."""
    import urllib.request

    from uip.clients.http_fuzz import frontend_error
    from uip.clients.http_fuzz import fuzz as run_fuzz

    host, _, port = url.rpartition(":")
    names = [m for m in models.split(",") if m]
    rep = run_fuzz(host or "localhost", int(port), names, cases_per_field)
    typer.echo(rep.table())
    ours = [e for e in rep.server_errors if not frontend_error(e[2])]
    for fuzzed, status, body in ours[:20]:
        typer.echo(f"  {status} ({fuzzed}): {body[:200]}")
    healthy = True
    for path in ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in names)]:
        try:
            urllib.request.urlopen(f"http://{url}{path}", timeout=10).close()
        except OSError as exc:
            healthy = False
            typer.echo(f"  not healthy after the fuzz: {path}: {exc}", err=True)
    ok = healthy and not ours
    typer.echo("fuzz: OK" if ok else "fuzz: FAILED", err=True)
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("txt2img")(txt2img)
    app.command("soak")(soak)
    app.command("fuzz")(fuzz)
    from uip.clients import lora

    lora.register(app)
