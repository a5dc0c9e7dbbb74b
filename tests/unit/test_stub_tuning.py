"""The LLM stubs' profiling and tuning helpers: the GIL switch interval and the hop trace."""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import pytest

from uip.core import gil, hoptrace
from uip.core.settings import ModelSettings

GPU_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def settings(**params: str) -> ModelSettings:
    return ModelSettings(name="m", parameters=params)


@pytest.fixture
def interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_switch_interval_comes_from_the_spec_then_the_environment(interval, monkeypatch):
    before = sys.getswitchinterval()
    monkeypatch.delenv(gil.ENV, raising=False)
    assert gil.apply_switch_interval(settings()) == 0 and sys.getswitchinterval() == before
    monkeypatch.setenv(gil.ENV, "2")
    assert gil.apply_switch_interval(settings()) == 2
    assert sys.getswitchinterval() == pytest.approx(0.002)
    assert gil.apply_switch_interval(settings(switch_interval_ms="0.5")) == 0.5
    assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_a_negative_switch_interval_is_refused(interval):
    with pytest.raises(ValueError, match="switch_interval_ms must be >= 0"):
        gil.apply_switch_interval(settings(switch_interval_ms="-1"))


def test_hop_trace_is_off_without_its_variable(monkeypatch):
    monkeypatch.delenv(hoptrace.ENV_DIR, raising=False)
    mod = importlib.reload(hoptrace)
    assert mod.trace is None
    mod.mark("r", "stage")  # costs nothing, writes nothing


def test_hop_trace_writes_each_mark_and_a_first_mark_once(tmp_path):
    trace = hoptrace.HopTrace(tmp_path / "m-1.tsv")
    trace.mark("r1", "execute", 1.5)
    trace.first("r1", "token")
    trace.first("r1", "token")
    trace.mark("r2", "execute")
    trace.flush()
    rows = [line.split("\t") for line in (tmp_path / "m-1.tsv").read_text().splitlines()]
    assert [(r, s) for r, s, _ in rows] == [("r1", "execute"), ("r1", "token"), ("r2", "execute")]
    assert float(rows[0][2]) == 1.5
    assert threading.active_count() >= 2  # its writer thread


def test_hop_trace_files_join_into_each_hop(tmp_path):
    sys.path.insert(0, str(GPU_BENCH))
    try:
        hop_trace = importlib.import_module("hop_trace")
    finally:
        sys.path.remove(str(GPU_BENCH))
    (tmp_path / "llm_bls-1.tsv").write_text(
        "a\tbls_execute\t1.000\na\tbls_submit\t1.010\nb\tbls_execute\t2.000\n")
    (tmp_path / "llm_engine-2.tsv").write_text("a\tengine_execute\t1.013\n")
    marks = hop_trace.load(tmp_path)
    rows = hop_trace.hops(marks, ("bls_execute", "bls_submit", "engine_execute"))
    assert [r["hop"] for r in rows] == ["bls_execute -> bls_submit",
                                        "bls_submit -> engine_execute"]
    assert rows[0]["n"] == 1 and rows[0]["p50_ms"] == pytest.approx(10.0)
    assert rows[1]["mean_ms"] == pytest.approx(3.0)
