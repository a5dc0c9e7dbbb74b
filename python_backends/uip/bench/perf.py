"""Drive perf_analyzer and read its CSV (pure apart from the subprocess)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PerfRow:
    concurrency: int
    throughput: float  # inferences/s
    p50_ms: float
    p90_ms: float
    p99_ms: float
    # the server's own rate over perf_analyzer's windows: Triton's count of the model's
    # successful requests in them (its report's "Server:" part); None where it has none
    server_throughput: float | None = None


def perf_analyzer_path() -> str:
    here = Path(sys.executable).parent / "perf_analyzer"
    return str(here) if here.exists() else (shutil.which("perf_analyzer") or "perf_analyzer")


def perf_command(model: str, url: str, concurrency: list[int], csv_path: Path,
                 extra: list[str], protocol: str = "grpc",
                 measurement_ms: int = 3000, stability: int = 50) -> list[str]:
    lo, hi = min(concurrency), max(concurrency)
    steps = sorted(set(concurrency))
    step = steps[1] - steps[0] if len(steps) > 1 else 1
    rng = f"{lo}:{hi}:{step}"
    return [perf_analyzer_path(), "-m", model, "-i", protocol, "-u", url,
            "--concurrency-range", rng, "--measurement-interval", str(measurement_ms),
            "--max-trials", "10", "--stability-percentage", str(stability),
            "-f", str(csv_path), *extra]


def parse_csv(path: Path) -> list[PerfRow]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append(PerfRow(
                concurrency=int(r["Concurrency"]),
                throughput=float(r["Inferences/Second"]),
                p50_ms=float(r["p50 latency"]) / 1000,
                p90_ms=float(r["p90 latency"]) / 1000,
                p99_ms=float(r["p99 latency"]) / 1000,
            ))
    return rows


def run_perf(model: str, url: str, concurrency: list[int], csv_path: Path, extra: list[str],
             protocol: str = "grpc", measurement_ms: int = 3000) -> list[PerfRow]:
    """Run one perf_analyzer per concurrency level (levels need not be evenly spaced). Its
    report (client and server counts per window) is printed and kept beside `csv_path`, as
    `<stem>.c<N>.log`."""
    rows: list[PerfRow] = []
    for c in concurrency:
        part = csv_path.with_suffix(f".c{c}.csv")
        log = part.with_suffix(".log")
        cmd = perf_command(model, url, [c], part, extra, protocol, measurement_ms)
        print("+", " ".join(cmd), file=sys.stderr)
        rc, report = _run_logged(cmd, log)
        if rc != 0:
            # A busy machine may never give 3 windows within 50 %: take the last windows
            # anyway, and say so.
            print(f"perf_analyzer: no stable measurement at concurrency {c}; retrying and "
                  "accepting any spread", file=sys.stderr)
            cmd = perf_command(model, url, [c], part, extra, protocol, measurement_ms, 1000)
            rc, report = _run_logged(cmd, log)
            if rc != 0:
                raise RuntimeError(f"perf_analyzer failed at concurrency {c}: see {log}")
        (row,) = parse_csv(part)
        row.server_throughput = server_throughput(report)
        rows.append(row)
        part.unlink()
    return rows


def server_throughput(report: str) -> float | None:
    """perf_analyzer's report (the last level in it) -> the server's requests/s over the same
    windows: its successful request count x the client's throughput / the client's count."""
    last = report.rsplit("Request concurrency:", 1)[-1]
    client = re.search(r"Client:.*?Request count: (\d+).*?Throughput: ([\d.]+) infer/sec", last,
                       re.S)
    server = re.search(r"Server:.*?Successful request count: (\d+)", last, re.S)
    if client is None or server is None or not int(client.group(1)):
        return None
    return int(server.group(1)) * float(client.group(2)) / int(client.group(1))


def _run_logged(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run perf_analyzer: its exit status and report (printed, and written to `log`)."""
    done = subprocess.run(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(done.stdout)
    log.write_text(done.stdout)
    return done.returncode, done.stdout
