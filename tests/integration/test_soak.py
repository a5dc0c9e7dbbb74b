"""The CI soak: 60 s of LLM gRPC streams (half cancelled at random points) mixed with SD and
embedding requests on the session server. 64 streams, not the 256 of `uip soak`'s default: on
the 2-core CI machine 256 streams push the LLM latency p50 past 25 s (docs/reliability.md has
two 10-minute runs at 256)."""

from __future__ import annotations

import pytest

from uip.clients.soak import SoakConfig, SoakReport, run_soak


@pytest.fixture(scope="module")
def report(server) -> SoakReport:
    cfg = SoakConfig(grpc_url=server.grpc_url, metrics_url=server.metrics_url, streams=64,
                     seconds=60, max_tokens=32, server_pid=server.proc.pid,
                     log_path=server.log_path, warmup_s=20)
    rep = run_soak(cfg)
    print(rep.to_json())
    return rep


def _growth(rep: SoakReport, stub: str) -> float:
    start, end = rep.rss_mb[stub]
    return end / start - 1


def test_soak_60_s_with_cancels(report):
    others = [p for p in report.problems if not p.startswith("stub RSS")]
    assert not others, report.problems
    assert report.outcomes["llm"]["cancelled"] > 0 and report.outcomes["llm"]["final"] > 0
    assert report.outcomes["sd"]["final"] > 0 and report.outcomes["embedding"]["final"] > 0
    grown = {s: round(_growth(report, s), 3) for s in report.rss_mb
             if _growth(report, s) > 0.05}
    assert not grown, f"stub RSS grew by more than 5 %: {grown}"
