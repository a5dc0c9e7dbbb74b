"""`uip`: serve the model repository, render it from specs, build artifacts, benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uip.core.paths import DEFAULT_REPOSITORY, DEFAULT_SPECS

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
repo_app = typer.Typer(help="Render the model repository from specs, or check it.",
                       no_args_is_help=True)
artifacts_app = typer.Typer(help="Build the default offline artifacts.", no_args_is_help=True)
app.add_typer(repo_app, name="repo")
app.add_typer(artifacts_app, name="artifacts")


class UserError(Exception):
    """An error shown as one paragraph, without a traceback."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Triton model repository"),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
    build_artifacts: bool = typer.Option(True, help="Build missing default artifacts first"),
    world_size: int = typer.Option(None, help="GPU ranks of a TensorRT-LLM engine (tp x pp): "
                                   "one tritonserver per rank under mpirun"),
    dry_run: bool = typer.Option(False, help="Print the command(s) without running anything"),
    gateway_port: int = typer.Option(9000, help="port of the OpenAI-compatible gateway"),
    no_gateway: bool = typer.Option(False, "--no-gateway", help="serve without the gateway"),
    admin_key: str = typer.Option(None, envvar="UIP_ADMIN_KEY",
                                  help="key (header uip-admin-key) for the model-repository, "
                                  "model-config, shared-memory, statistics, trace and logging "
                                  "APIs; generated and printed once when not set"),
) -> None:
    """Run tritonserver in the foreground on the repository, supervised (a model whose stub
    dies is reloaded), and the OpenAI-compatible gateway beside it. Unknown flags go to
    tritonserver."""
    from uip import artifacts
    from uip.launch.command import Ports, check_repository
    from uip.launch.server import run_foreground
    from uip.repo.needed import needed

    check_repository(model_repository)
    if world_size is not None or dry_run:  # multi-GPU launch and dry runs: uip.launch.mpi
        from uip.launch.mpi import serve_multi_gpu, single_command_text

        ports = Ports(http_port, grpc_port, metrics_port)
        if world_size is None:
            typer.echo(single_command_text(model_repository, ports, list(ctx.args)))
            raise typer.Exit(0)
        before = (lambda: artifacts.ensure(needed(model_repository))) if build_artifacts else None
        raise typer.Exit(serve_multi_gpu(world_size, model_repository, ports, dry_run,
                                         list(ctx.args), before_start=before))
    if build_artifacts:
        missing = needed(model_repository)
        for name in artifacts.ensure(missing):
            typer.echo(f"built artifact {name}", err=True)
    ports = Ports(http_port, grpc_port, metrics_port)
    from uip.launch.admin import ADMIN_HEADER, KEY_ENV
    from uip.launch.admin import admin_key as resolve_key

    key, generated = resolve_key(admin_key)
    if generated:
        typer.echo(f"uip: admin APIs need the header '{ADMIN_HEADER}: {key}' (generated for this "
                   f"run; set --admin-key or ${KEY_ENV} to choose it)", err=True)
    if no_gateway:
        raise typer.Exit(run_foreground(model_repository, ports, list(ctx.args), key))
    from uip.gateway.cli import start_beside

    gw = start_beside(grpc_port, gateway_port)
    typer.echo(f"gateway: http://localhost:{gateway_port}/v1", err=True)
    try:
        rc = run_foreground(model_repository, ports, list(ctx.args), key)
    finally:
        gw.terminate()
        gw.wait(30)
    raise typer.Exit(rc)


@repo_app.command("build")
def repo_build(
    specs: Path = typer.Option(DEFAULT_SPECS, help="folder of *.yaml specs"),
    out: Path = typer.Option(DEFAULT_REPOSITORY, help="model repository to write"),
) -> None:
    """Render every spec into `out` (config.pbtxt through Triton's protobuf + model.py shims)."""
    from uip.repo.render import build_repository
    from uip.spec.schema import load_specs

    names = build_repository(load_specs(specs), out)
    typer.echo(f"rendered {len(names)} models into {out}: {', '.join(names)}")


@repo_app.command("check")
def repo_check(
    specs: Path = typer.Option(DEFAULT_SPECS, help="folder of *.yaml specs"),
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="checked-in model repository"),
) -> None:
    """Fail (exit 1, with the diff) when the repository differs from what the specs render."""
    from uip.repo.render import diff_repository
    from uip.spec.schema import load_specs

    diff = diff_repository(load_specs(specs), repository)
    if diff:
        typer.echo(diff)
        typer.echo(f"{repository} differs from what {specs} renders; run `uip repo build`.",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"{repository} matches {specs}")


@artifacts_app.command("build")
def artifacts_build(
    names: list[str] = typer.Argument(None, help="artifact names (default: all)"),
    force: bool = typer.Option(False, help="rebuild even when present"),
) -> None:
    """Build default artifacts under $UIP_ARTIFACTS (default: artifacts/)."""
    from uip import artifacts

    unknown = set(names or []) - set(artifacts.BUILDERS)
    if unknown:
        raise UserError(f"unknown artifacts {sorted(unknown)}; known: {sorted(artifacts.BUILDERS)}")
    built = artifacts.ensure(names or None, force=force)
    typer.echo(f"built: {', '.join(built) or 'nothing (all present)'}")


def _register_optional() -> None:
    """Commands contributed by other modules (LLM/SD clients, benchmarks)."""
    import importlib

    for module in ("uip.bench.cli", "uip.clients.cli", "uip.gateway.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise
            continue
        mod.register(app)


def main() -> None:
    from uip.core.settings import ArtifactError
    from uip.gateway.spec import GatewaySpecError
    from uip.gateway.store import StoreError
    from uip.launch.command import LaunchError
    from uip.spec.schema import SpecError

    _register_optional()
    try:
        app()
    except (UserError, LaunchError, SpecError, ArtifactError, GatewaySpecError, StoreError) as e:
        typer.echo(f"uip: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
