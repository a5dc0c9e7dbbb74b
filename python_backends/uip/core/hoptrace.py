"""Timestamps of a request's hops between the LLM stubs, for profiling (off by default).

Set `UIP_HOP_TRACE_DIR` in the server's environment: `mark(request_id, stage)` then records
`time.monotonic()` (one clock for every process of the machine), and a thread appends the
marks to `<dir>/<label>-<pid>.tsv` (`request_id<TAB>stage<TAB>seconds`) every second. llm_bls
and llm_engine mark the same Triton request id (llm_bls's id for its engine request), so the
files join into each request's path: `benchmarks/gpu/hop_trace.py` reads them. `first` marks
a stage once per request (e.g. its first token), `mark` every time. Unset, both cost one
attribute test.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from uip.core.sampler import process_label

ENV_DIR = "UIP_HOP_TRACE_DIR"
WRITE_PERIOD_S = 1.0


class HopTrace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._marks: list[tuple[str, str, float]] = []
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="uip-hoptrace", daemon=True).start()

    def mark(self, rid: str, stage: str, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            self._marks.append((rid, stage, t))

    def first(self, rid: str, stage: str) -> None:
        t = time.monotonic()
        with self._lock:
            if (rid, stage) not in self._seen:
                self._seen.add((rid, stage))
                self._marks.append((rid, stage, t))

    def flush(self) -> None:
        with self._lock:
            marks, self._marks = self._marks, []
        if marks:
            with open(self.path, "a") as f:
                f.writelines(f"{r}\t{s}\t{t:.6f}\n" for r, s, t in marks)

    def _run(self) -> None:
        while True:
            time.sleep(WRITE_PERIOD_S)
            self.flush()


def _from_env() -> HopTrace | None:
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return HopTrace(Path(folder) / f"{process_label()}-{os.getpid()}.tsv")


trace = _from_env()


def mark(rid: str, stage: str, t: float | None = None) -> None:
    """Record `stage` of request `rid` now (or at `t`, a time.monotonic() value)."""
    if trace is not None:
        trace.mark(rid, stage, t)


def first(rid: str, stage: str) -> None:
    """Record `stage` of `rid` now, unless it was recorded before."""
    if trace is not None:
        trace.first(rid, stage)
