"""`uip bench transfer`: pull one folder from an nginx throttled per connection (`limit_rate`)
with each `--parallel` level, same run; prints seconds and MB/s per level and the speed-up.
`--round-trip`: instead, push and pull the folder through nginx and through moto's S3 server,
unthrottled, and check every file's sha256 against the source's."""

from __future__ import annotations

import hashlib
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


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the manifest, by relative path (hashlib)."""
    from uip.transfer.manifest import MANIFEST_NAME

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[p.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def round_trip(src: Path, work: Path, part_size_mib: int, parallel: int) -> list[tuple]:
    """Push `src` and pull it back through nginx and moto: (store, push s, pull s, equal,
    note) per store."""
    import boto3

    from uip.bench.moto import MotoServer
    from uip.bench.nginx import Nginx
    from uip.transfer import TransferOptions, pull, push

    opts = TransferOptions(part_size=part_size_mib * MiB, parallel=parallel, progress=False)
    want, rows = digests(src), []

    def one(store: str, url: str) -> tuple[float, float, bool]:
        t = time.perf_counter()
        push(src, url, opts)
        t_push = time.perf_counter() - t
        dest = work / f"pulled-{store}"
        t = time.perf_counter()
        pull(url, dest, opts)
        t_pull = time.perf_counter() - t
        equal = digests(dest) == want
        shutil.rmtree(dest)
        return t_push, t_pull, equal

    served = work / "served"
    served.mkdir(exist_ok=True)
    with Nginx(served) as nginx:
        rows.append(("nginx", *one("nginx", f"{nginx.url}/a"), ""))
    shutil.rmtree(served)
    moto = MotoServer(work).start()
    env = {"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="bench")
        result = one("moto", "s3://bench/a")
        rows.append(("moto", *result, f"moto peak RSS {moto.peak_rss_bytes() / MiB:.0f} MiB"))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        moto.stop()
    return rows


def bench_transfer(
    size_mb: int = typer.Option(int(os.environ.get("UIP_TRANSFER_BENCH_MB", "1024")),
                                help="folder size in MiB (env UIP_TRANSFER_BENCH_MB)"),
    limit_rate: str = typer.Option("8m", help="nginx limit_rate, per connection (bytes/s; "
                                   "k/m suffixes)"),
    parallel: str = typer.Option("1,8", help="comma-separated --parallel levels"),
    part_size_mib: int = typer.Option(16, help="part size of the push"),
    workdir: Path = typer.Option(None, help="scratch folder (default: a temporary one)"),
    round_trip_: bool = typer.Option(False, "--round-trip", help="push + pull through nginx "
                                     "and moto (S3), unthrottled; sha256 checked"),
) -> None:
    """Pull a SIZE_MB folder (one large file and a few small ones) through nginx's /slow/
    location (limit_rate per connection) at each --parallel level; or (--round-trip) push
    and pull it through nginx and moto's S3 server."""
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
        if round_trip_:
            rows = round_trip(src, work, part_size_mib, int(parallel.split(",")[-1]))
            typer.echo("| store | push s | pull s | sha256 equal | |")
            typer.echo("| --- | ---: | ---: | --- | --- |")
            for store, t_push, t_pull, equal, note in rows:
                typer.echo(f"| {store} | {t_push:.1f} | {t_pull:.1f} | {equal} | {note} |")
            if not all(r[3] for r in rows):
                raise typer.Exit(1)
            return
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
