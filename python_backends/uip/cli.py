"""`uip`: serve the model repository, render it from specs, build artifacts, benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uip.core.paths import DEFAULT_REPOSITORY, DEFAULT_SPECS

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
repo_app = typer.Typer(help="Render the model repository from specs, or check it.",
                       no_args_is_help=True)
artifacts_app = typer.Typer(help="Build the default offline artifacts; push and pull artifact "
                            "folders to and from s3:// and http(s)://.", no_args_is_help=True)
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
    gateway_workers: int = typer.Option(1, min=1, help="worker processes of the gateway"),
    admin_key: str = typer.Option(None, envvar="UIP_ADMIN_KEY",
                                  help="key (header uip-admin-key) for the model-repository, "
                                  "model-config, shared-memory, statistics, trace and logging "
                                  "APIs; generated and printed once when not set"),
) -> None:
    """Run tritonserver in the foreground on the repository, supervised (a model whose stub
    dies is reloaded), and the OpenAI-compatible gateway beside it. Unknown flags go to
    tritonserver."""
    from uip.launch.command import Ports, check_repository
    from uip.launch.server import run_foreground

    check_repository(model_repository)
    if world_size is not None or dry_run:  # multi-GPU launch and dry runs: uip.launch.mpi
        from uip.launch.mpi import serve_multi_gpu, single_command_text

        ports = Ports(http_port, grpc_port, metrics_port)
        if world_size is None:
            typer.echo(single_command_text(model_repository, ports, list(ctx.args)))
            raise typer.Exit(0)
        def before() -> None:
            _prepare_artifacts(model_repository, build_artifacts)

        raise typer.Exit(serve_multi_gpu(world_size, model_repository, ports, dry_run,
                                         list(ctx.args), before_start=before))
    _prepare_artifacts(model_repository, build_artifacts)
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

    gw = start_beside(grpc_port, gateway_port, gateway_workers)
    typer.echo(f"gateway: http://localhost:{gateway_port}/v1", err=True)
    try:
        rc = run_foreground(model_repository, ports, list(ctx.args), key)
    finally:
        gw.terminate()
        gw.wait(30)
    raise typer.Exit(rc)


def _prepare_artifacts(model_repository: Path, build: bool) -> None:
    """Build the missing default artifacts (when `build`) and pull the missing ones that specs
    name by URL into the artifacts cache (always: the models cannot load without them)."""
    from uip import artifacts
    from uip.repo.needed import needed, needed_urls
    from uip.transfer.cache import ensure_urls

    if build:
        for name in artifacts.ensure(needed(model_repository)):
            typer.echo(f"built artifact {name}", err=True)
    for url in ensure_urls(needed_urls(model_repository)):
        typer.echo(f"pulled artifact {url}", err=True)


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


def _transfer_options(part_size_mib: int, parallel: int, attempts: int, progress: bool):  # noqa: ANN202
    from uip.transfer import TransferOptions
    from uip.transfer.options import MiB

    def warn(what: str, attempt: int, error: BaseException) -> None:
        typer.echo(f"uip: retrying {what} (attempt {attempt} failed: {error})", err=True)

    return TransferOptions(part_size=part_size_mib * MiB, parallel=parallel, attempts=attempts,
                           progress=progress, on_retry=warn)


PARALLEL = typer.Option(8, "--parallel", "-j", min=1, help="parts in flight at once")
ATTEMPTS = typer.Option(5, min=1, help="tries per part, with exponential backoff between")
PROGRESS = typer.Option(True, help="progress bars on stderr")


@artifacts_app.command("push")
def artifacts_push(
    folder: Path = typer.Argument(..., help="artifact folder to upload"),
    url: str = typer.Argument(..., help="s3://bucket/prefix or http(s)://host/path (HTTP: a "
                              "server that accepts PUT, e.g. nginx WebDAV)"),
    part_size_mib: int = typer.Option(16, "--part-size-mib", min=1,
                                      help="part size (S3: at least 5), written to the manifest"),
    parallel: int = PARALLEL,
    attempts: int = ATTEMPTS,
    progress: bool = PROGRESS,
) -> None:
    """Upload FOLDER's files (large ones in parallel multipart parts on S3) and then its sha256
    manifest, uip-manifest.json."""
    from uip.transfer import push

    r = push(folder, url, _transfer_options(part_size_mib, parallel, attempts, progress))
    typer.echo(f"pushed {r.files} files ({r.bytes} bytes, {r.multipart_files} multipart) to {url}")


@artifacts_app.command("pull")
def artifacts_pull(
    url: str = typer.Argument(..., help="s3://bucket/prefix or http(s)://host/path of a pushed "
                              "folder"),
    folder: Path = typer.Argument(..., help="destination folder (created)"),
    parallel: int = PARALLEL,
    attempts: int = ATTEMPTS,
    progress: bool = PROGRESS,
    force: bool = typer.Option(False, help="replace FOLDER when it holds something else"),
) -> None:
    """Download a pushed folder: parts in parallel, each checked against the manifest's sha256
    (a bad part is fetched again), resumable (run it again after an interruption: only missing
    parts are fetched), renamed into place only once every file matches."""
    from uip.transfer import pull

    r = pull(url, folder, _transfer_options(16, parallel, attempts, progress), force=force)
    if r.up_to_date:
        typer.echo(f"{r.dest} already holds {url} (verified)")
    else:
        typer.echo(f"pulled {url} into {r.dest} ({r.fetched_parts} parts, {r.fetched_bytes} "
                   "bytes fetched)")


def _optional(module: str):
    """`module`, or None when it or a third-party library it needs is not installed (e.g. no
    SQLAlchemy on a GPU benchmark host); a missing uip module other than itself is a bug."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "uip" and not module.startswith(e.name):
            raise
        return None


def _register_optional() -> None:
    """Commands contributed by other modules (LLM/SD clients, benchmarks)."""
    for module in ("uip.bench.cli", "uip.clients.cli", "uip.gateway.cli"):
        mod = _optional(module)
        if mod is not None:
            mod.register(app)


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors shown without a traceback (those of modules whose libraries are here)."""
    found = ((_optional(module), name) for module, name in (
        ("uip.core.settings", "ArtifactError"), ("uip.launch.command", "LaunchError"),
        ("uip.spec.schema", "SpecError"), ("uip.transfer", "TransferError"),
        ("uip.gateway.spec", "GatewaySpecError"), ("uip.gateway.store", "StoreError")))
    return (UserError, *(getattr(mod, name) for mod, name in found if mod is not None))


def main() -> None:
    _register_optional()
    try:
        app()
    except _user_errors() as e:
        typer.echo(f"uip: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
