"""A wall-clock stack sampler for every Python thread of a process, for profiling the model
stubs where no outside profiler can attach (py-spy needs ptrace).

Set `UIP_PROFILE_DIR` in the server's environment: each stub then samples all its threads every
`UIP_PROFILE_INTERVAL_MS` (default 5) and rewrites `<dir>/<label>-<pid>.folded` every second in
the collapsed-stack format flame-graph tools read (`thread;outer;...;inner count`). A sample
shows where each thread stands, running or waiting (a thread blocked in `queue.get` shows that
frame), so read it per thread. Off unless the variable is set.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ENV_DIR = "UIP_PROFILE_DIR"
ENV_INTERVAL = "UIP_PROFILE_INTERVAL_MS"
WRITE_PERIOD_S = 1.0
_started: StackSampler | None = None


def frame_label(code, line: int) -> str:
    return f"{code.co_name} ({Path(code.co_filename).name}:{line})"


def folded(frame) -> str:
    """One thread's stack, outermost first, ';'-joined."""
    parts = []
    while frame is not None:
        parts.append(frame_label(frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return ";".join(reversed(parts))


class StackSampler:
    def __init__(self, path: Path, interval_s: float = 0.005) -> None:
        self.path = path
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uip-sampler", daemon=True)

    def start(self) -> StackSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        me = threading.get_ident()
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != me:
                self.counts[f"{names.get(ident, ident)};{folded(frame)}"] += 1
        self.samples += 1

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{stack} {n}\n" for stack, n in self.counts.most_common()))
        tmp.replace(self.path)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.sample()
            if time.monotonic() - last >= WRITE_PERIOD_S:
                last = time.monotonic()
                self.write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.write()


def process_label() -> str:
    """A stub's model name (its argv[1] is <repo>/<model>/<version>/model.py), else the
    program's name."""
    try:
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "python"
    if len(argv) > 1 and argv[1].endswith(b"model.py"):
        return Path(argv[1].decode()).parents[1].name
    return Path(argv[0].decode()).name or "python"


def start_from_env(label: str | None = None) -> StackSampler | None:
    """Start the process's one sampler when $UIP_PROFILE_DIR is set (once per process)."""
    global _started
    folder = os.environ.get(ENV_DIR)
    if not folder or _started is not None:
        return _started
    label = label or process_label()
    Path(folder).mkdir(parents=True, exist_ok=True)
    interval = float(os.environ.get(ENV_INTERVAL, "5")) / 1000
    _started = StackSampler(Path(folder) / f"{label}-{os.getpid()}.folded", interval).start()
    return _started
