"""`uip bench memory`: the proportional set size (PSS) of a tritonserver and all its Python
stubs, from /proc/<pid>/smaps_rollup (Linux). PSS shares each page among the processes that
map it, so the sum is what the server really costs, without counting shared libraries twice."""

from __future__ import annotations

from pathlib import Path

import psutil
import typer

from uip.core.paths import DEFAULT_REPOSITORY


def pss_bytes(pid: int) -> int:
    """One process's PSS; 0 when it has gone or cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(pid: int) -> dict[str, int]:
    """PSS per process of `pid` and its descendants, keyed 'name pid'."""
    root = psutil.Process(pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = p.cmdline()
            name = cmd[1] if "stub" in p.name() and len(cmd) > 1 else p.name()  # model.py
        except psutil.Error:
            continue
        out[f"{name} {p.pid}"] = pss_bytes(p.pid)
    return out


def report(pid: int) -> str:
    parts = tree_pss(pid)
    ranked = sorted(parts.items(), key=lambda kv: -kv[1])
    lines = [f"  {v / 2**20:8.1f} MiB  {k}" for k, v in ranked if v >= 2**20]
    small = [v for v in parts.values() if v < 2**20]  # helpers such as sh / sleep watchers
    if small:
        lines.append(f"  {sum(small) / 2**20:8.1f} MiB  {len(small)} processes under 1 MiB")
    total = sum(parts.values())
    return f"PSS {total / 2**30:.2f} GiB ({len(parts)} processes)\n" + \
        "\n".join(lines)


def bench_memory(
    pid: int = typer.Option(0, help="a running tritonserver's pid (default: start one)"),
    model_repository: Path = typer.Option(DEFAULT_REPOSITORY),
) -> None:
    """PSS of tritonserver and its stubs once every model is ready (default repository)."""
    if pid:
        print(report(pid))
        return
    import tempfile

    from uip import artifacts
    from uip.launch.server import TritonServer
    from uip.repo.needed import needed

    artifacts.ensure(needed(model_repository))
    with tempfile.TemporaryDirectory(prefix="uip-bench-memory-") as tmp:
        srv = TritonServer(model_repository, Path(tmp) / "server.log",
                           extra=["--log-verbose=0"]).start()
        try:
            srv.wait_models()
            print(report(srv.proc.pid), flush=True)
        finally:
            srv.stop()
