"""A metric of a running test server, read from its Prometheus endpoint (test support)."""

from __future__ import annotations

from uip.clients import metrics


def metric(server, name: str) -> float:
    """`name` summed over its series (all models); the test fails when it is not exported."""
    found = metrics.select(metrics.fetch(server.metrics_url, timeout=5), name)
    assert found, f"metric {name} not exported"
    return sum(s.value for s in found)
