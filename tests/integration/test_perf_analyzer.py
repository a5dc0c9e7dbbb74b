"""`.venv/bin/perf_analyzer` runs against the served `embedding` model."""

from __future__ import annotations

import subprocess

import pytest

from uip.bench.embedding import PERF_ARGS
from uip.bench.perf import parse_csv, perf_analyzer_path


def test_perf_analyzer_runs_against_embedding(server, tmp_path):
    out = tmp_path / "perf.csv"
    # HTTP: perf_analyzer reads the model config (a restricted API) and sends headers (-H) only
    # over HTTP
    (header,) = (f"{k}:{v}" for k, v in server.admin_headers().items())
    cmd = [perf_analyzer_path(), "-m", "embedding", "-i", "http", "-u", server.http_url,
           "-H", header,
           "--concurrency-range", "2", "--measurement-mode", "count_windows",
           "--measurement-request-count", "20", "--stability-percentage", "1000",
           "--max-trials", "4", "-f", str(out), *PERF_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = parse_csv(out)
    assert row.concurrency == 2
    assert row.throughput > 0
    assert 0 < row.p50_ms <= row.p99_ms


def test_run_perf_keeps_perf_analyzers_report(server, tmp_path):
    """`uip bench`'s driver: one row per level, and perf_analyzer's own report (client and
    server counts of its windows) kept beside the CSV."""
    from uip.bench.perf import run_perf

    (header,) = (f"{k}:{v}" for k, v in server.admin_headers().items())
    (row,) = run_perf("embedding", server.http_url, [2], tmp_path / "e.perf.csv",
                      ["-H", header, *PERF_ARGS], protocol="http", measurement_ms=500)
    assert row.concurrency == 2 and row.throughput > 0
    # Triton's count over the same windows; the client's windows may cut a request or two
    assert row.server_throughput == pytest.approx(row.throughput, rel=0.5)
    report = (tmp_path / "e.perf.c2.log").read_text()
    assert "Request concurrency: 2" in report and "Server:" in report, report
