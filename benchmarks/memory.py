"""Memory of a served repository: RSS and PSS of tritonserver and each Python stub.

    .venv/bin/python benchmarks/memory.py [--model-repository DIR] [--settle 5]

Starts the server on free ports, waits for every model, then prints one row per process and
the sums. PSS (proportional set size) shares each shared page among the processes that map
it, so its sum is what the server really holds; summed RSS counts shared libraries once per
process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from uip import artifacts
from uip.core.paths import DEFAULT_REPOSITORY
from uip.launch.server import TritonServer
from uip.repo.needed import needed

MIB = 2**20


def model_of(proc: psutil.Process) -> str:
    args = proc.cmdline()
    for a in args:
        if a.endswith("/model.py"):
            return Path(a).parent.parent.name
    return proc.name()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait after loading")
    a = p.parse_args()
    artifacts.ensure(needed(a.model_repository))
    log = Path(tempfile.mkdtemp(prefix="uip-mem-")) / "server.log"
    srv = TritonServer(a.model_repository, log).start()
    try:
        srv.wait_models()
        time.sleep(a.settle)
        root = psutil.Process(srv.proc.pid)
        rss = pss = 0
        print("| process | RSS MiB | PSS MiB |\n|---|---|---|")
        for proc in [root, *root.children(recursive=True)]:
            m = proc.memory_full_info()
            rss, pss = rss + m.rss, pss + m.pss
            print(f"| {model_of(proc)} | {m.rss / MIB:.0f} | {m.pss / MIB:.0f} |")
        print(f"| **sum** | {rss / MIB:.0f} | {pss / MIB:.0f} |")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
