"""`uip.bench.perf.server_throughput`: the server's rate over perf_analyzer's own windows,
from its report (perf_analyzer 2.51's text)."""

from __future__ import annotations

import pytest

from uip.bench.perf import server_throughput

REPORT = """\
Request concurrency: {c}
  Client: 
    Request count: {client}
    Throughput: {rate} infer/sec
    p50 latency: 17708 usec
  Server: 
    Inference count: {server}
    Execution count: 18
    Successful request count: {server}
    Avg request latency: 103640 usec (overhead 6 usec + queue 87681 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: {c}, throughput: {rate} infer/sec, latency 104111 usec
"""


def test_server_rate_over_the_same_windows():
    # 80 requests seen by the client at 20/s (4 s of windows); the server finished 64 in them
    text = REPORT.format(c=2, client=80, rate=20.0, server=64)
    assert server_throughput(text) == pytest.approx(16.0)


def test_the_last_level_of_a_report_counts():
    text = (REPORT.format(c=1, client=10, rate=5.0, server=10)
            + REPORT.format(c=2, client=40, rate=10.0, server=50))
    assert server_throughput(text) == pytest.approx(12.5)


def test_a_report_without_server_counts_gives_none():
    text = REPORT.format(c=2, client=80, rate=20.0, server=64).split("  Server:")[0]
    assert server_throughput(text) is None
    assert server_throughput("perf_analyzer: error") is None
