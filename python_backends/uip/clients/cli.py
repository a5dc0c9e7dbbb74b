"""`uip generate` (LLM, streaming over gRPC or SSE) and `uip txt2img` (Stable Diffusion)."""

from __future__ import annotations

import runpy
import sys

import typer

from uip.core.paths import PROJECT_ROOT


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
) -> None:
    """Generate text; deltas are printed as they arrive."""
    import uuid

    from uip.clients.llm import GenerateError
    from uip.clients.llm import generate as run

    url = url or ("localhost:8001" if protocol == "grpc" else "localhost:8000")
    params = {k: v for k, v in dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                    top_k=top_k, seed=seed, stop_words=stop or None).items()
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


def txt2img(ctx: typer.Context) -> None:
    """Stable Diffusion to a PNG: the flags of clients/txt2img.py (`uip txt2img --help`)."""
    sys.argv = ["uip txt2img", *ctx.args]
    runpy.run_path(str(PROJECT_ROOT / "clients" / "txt2img.py"), run_name="__main__")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command("txt2img", add_help_option=False, context_settings=passthrough)(txt2img)
