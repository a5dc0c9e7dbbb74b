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


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("txt2img")(txt2img)
