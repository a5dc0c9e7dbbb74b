"""`uip bench transfer`: pull one folder from an nginx throttled per connection (`limit_rate`)
with each `--parallel` level, same run; prints seconds and MB/s per level and the speed-up."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import typer

MiB = 1024 * 1024


def make_folder(folder: Path, total_bytes: int, small_files: int = 3) -> dict[str, int]:
    """A folder like a model's: a few small files (config, tokenizer) and one large file
    holding the rest. Random bytes, made fast: one random MiB repeated, each copy starting with
    its own index, so no two MiB blocks are equal (a misplaced part fails its sha256).
    Returns path -> size."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {f"small-{i}.json": 1000 * (i + 1) for i in range(small_files)}
    sizes["weights/model.safetensors"] = max(0, total_bytes - sum(sizes.values()))
    block = os.urandom(MiB)
    for rel, size in sizes.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for index, offset in enumerate(range(0, size, MiB)):
                n = min(MiB, size - offset)
                f.write((index.to_bytes(8, "little") + block[8:])[:n])
    return sizes


def bench_transfer(
    size_mb: int = typer.Option(int(os.environ.get("UIP_TRANSFER_BENCH_MB", "1024")),
                                help="folder size in MiB (env UIP_TRANSFER_BENCH_MB)"),
    limit_rate: str = typer.Option("8m", help="nginx limit_rate, per connection (bytes/s; "
                                   "k/m suffixes)"),
    parallel: str = typer.Option("1,8", help="comma-separated --parallel levels"),
    part_size_mib: int = typer.Option(16, help="part size of the push"),
    workdir: Path = typer.Option(None, help="scratch folder (default: a temporary one)"),
) -> None:
    """Pull a SIZE_MB folder (one large file and a few small ones) through nginx's /slow/
    location (limit_rate per connection) at each --parallel level."""
    from uip.bench.nginx import Nginx
    from uip.transfer import TransferOptions, pull, push

    levels = [int(x) for x in parallel.split(",")]
    work = Path(tempfile.mkdtemp(prefix="uip-bench-transfer-", dir=workdir))
    try:
        src, served = work / "src", work / "served"
        served.mkdir()
        t = time.perf_counter()
        make_folder(src, size_mb * MiB)
        typer.echo(f"made {size_mb} MiB in {time.perf_counter() - t:.1f} s", err=True)
        with Nginx(served, limit_rate=limit_rate) as nginx:
            push(src, f"{nginx.url}/a", TransferOptions(part_size=part_size_mib * MiB,
                                                       progress=False))
            rows = []
            for level in levels:
                dest = work / f"pulled-{level}"
                t = time.perf_counter()
                pull(f"{nginx.slow_url}/a", dest, TransferOptions(parallel=level))
                secs = time.perf_counter() - t
                rows.append((level, secs))
                shutil.rmtree(dest)
        typer.echo(f"| --parallel | seconds | MiB/s | vs --parallel {levels[0]} |")
        typer.echo("| ---: | ---: | ---: | ---: |")
        for level, secs in rows:
            typer.echo(f"| {level} | {secs:.1f} | {size_mb / secs:.1f} | "
                       f"{rows[0][1] / secs:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
