"""A metric of a running test server, read from its Prometheus endpoint (test support)."""

from __future__ import annotations

import time
from collections.abc import Callable

from uip.clients import metrics


def metric(server, name: str) -> float:
    """`name` summed over its series (all models); the test fails when it is not exported."""
    found = metrics.select(metrics.fetch(server.metrics_url, timeout=5), name)
    assert found, f"metric {name} not exported"
    return sum(s.value for s in found)


def assert_engine_at_rest(read: Callable[[str], float], timeout: float = 20.0) -> None:
    """The engine's KV blocks and sequences back to 0 within `timeout` (`read`: metric name
    -> value, e.g. `lambda n: metric(server, n)`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read("uip_llm_kv_blocks_used") > 0:
        time.sleep(0.2)
    assert read("uip_llm_kv_blocks_used") == 0
    assert read("uip_llm_active_sequences") == 0
