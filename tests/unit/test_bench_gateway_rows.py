"""`uip bench gateway`'s per-round pairs, verdict and CPU placement (no server)."""

from __future__ import annotations

import os

import pytest
import typer

from uip.bench.gateway import Run, _row, verdict
from uip.bench.gateway_run import gateway_workers, placement


def _run(tokens: int, seconds: float, ttfts: list[float]) -> Run:
    return Run(tokens, ttfts, seconds, {"client": 1.0, "gateway": 0.5, "server": 2.0})


def test_row_pairs_rounds_and_verdict_judges_their_median():
    runs = {"direct": [_run(100, 1.0, [10.0]), _run(100, 1.0, [10.0]), _run(100, 2.0, [20.0])],
            "gateway": [_run(100, 1.0, [12.0]), _run(100, 1.1, [11.0]), _run(100, 1.0, [60.0])]}
    row = _row(1, 1, runs)
    assert row["rounds"] == 3
    assert row["ratio_median"] == pytest.approx(1.0)  # of 1.0, 1/1.1, 2.0
    assert (row["ratio_min"], row["ratio_max"]) == (pytest.approx(1 / 1.1), pytest.approx(2.0))
    assert row["added_ttft_median_ms"] == pytest.approx(2.0)
    assert row["added_ttft_max_ms"] == pytest.approx(40.0)
    assert row["gateway_cpu_us_per_token"] == pytest.approx(1.5 / 300 * 1e6)
    [line] = verdict([row])
    assert line.endswith(": met")  # 1.0 >= 0.95 and +2 ms <= 3 ms
    assert verdict([row], added_ms=1.0)[0].endswith("NOT met")
    assert verdict([row], ratio=1.01)[0].endswith("NOT met")


def test_row_refuses_unequal_work():
    with pytest.raises(RuntimeError, match="not the same work"):
        _row(1, 1, {"direct": [_run(100, 1.0, [1.0])], "gateway": [_run(99, 1.0, [1.0])]})


def test_placement_lists_and_auto():
    assert placement("") is None
    assert placement("0-3,8:4:5-6") == {"server": {0, 1, 2, 3, 8}, "gateway": {4},
                                        "client": {5, 6}}
    with pytest.raises(typer.BadParameter):
        placement("0-3:4")
    auto = placement("auto")
    if len(os.sched_getaffinity(0)) < 8:
        assert auto is None
    else:
        assert auto is not None and len(auto["client"]) == len(auto["gateway"]) == 2


def test_gateway_workers_default_to_the_gateway_cores():
    assert gateway_workers(None, None) == 1
    assert gateway_workers(None, placement("0-11:12-13:14-15")) == 2
    assert gateway_workers(3, placement("0-11:12-13:14-15")) == 3
