"""Triton custom metrics that follow an in-process stats object: gauges take its levels,
counters its running totals (each update adds what grew since the last one)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from uip.triton import pb


@dataclass(frozen=True)
class Stat:
    field: str  # attribute of the stats object
    name: str  # Prometheus family
    description: str


class StatsMetrics:
    def __init__(self, labels: dict[str, str], gauges: Sequence[Stat] = (),
                 counters: Sequence[Stat] = ()):
        family = pb.pb_utils.MetricFamily
        self.families: list = []

        def metric(stat: Stat, kind):
            f = family(name=stat.name, description=stat.description, kind=kind)
            self.families.append(f)
            return f.Metric(labels=labels)

        self._gauges = [(s.field, metric(s, family.GAUGE)) for s in gauges]
        self._counters = [(s.field, metric(s, family.COUNTER)) for s in counters]
        self._reported = [0.0] * len(self._counters)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, stats: object) -> None:
        for field, gauge in self._gauges:
            gauge.set(float(getattr(stats, field)))
        for k, (field, counter) in enumerate(self._counters):
            value = float(getattr(stats, field))
            if value > self._reported[k]:
                counter.increment(value - self._reported[k])
                self._reported[k] = value

    def start(self, read: Callable[[], object], period_s: float, name: str) -> StatsMetrics:
        """`update(read())` every `period_s` on a thread of its own, until `close`."""
        def loop() -> None:
            while not self._stop.wait(period_s):
                try:
                    self.update(read())
                except Exception:  # noqa: BLE001 - metrics must never take the model down
                    pb.log.exception("%s: metrics update failed", name)

        self._thread = threading.Thread(target=loop, name=f"{name}-metrics", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._gauges, self._counters, self.families = [], [], []
